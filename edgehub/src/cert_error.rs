//! Errors of the edge certificate bootstrap and rotation.
//!
//! Every variant names what was tried and, where the operator has to act, what to do.

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

/// Why the edge certificate could not be obtained, loaded or renewed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CertError {
    /// No usable pair on disk and no bootstrap token anywhere.
    #[error(
        "the edge certificate {cert_file} cannot be used ({why}) and no bootstrap token was found in {token_file} \
         or modules.edgeHub.token; run `keadm gettoken` on the cloud and put the token in one of them"
    )]
    TokenMissing {
        /// The certificate file that was tried.
        cert_file: PathBuf,
        /// Why the pair on disk is not usable.
        why: String,
        /// The bootstrap token file that was looked at.
        token_file: PathBuf,
    },
    /// The token is not `<cahash>.<jwt header>.<jwt payload>.<jwt signature>`.
    #[error(
        "bootstrap token is malformed: {why}; expected <cahash>.<jwt header>.<jwt payload>.<jwt signature>, \
         copy the whole output of `keadm gettoken` on the cloud"
    )]
    TokenFormat {
        /// What is wrong with it (never the token itself).
        why: String,
    },
    /// The token's `exp` claim is in the past.
    #[error(
        "bootstrap token expired at unix time {expired_at}; create a new one with `keadm gettoken` on the cloud"
    )]
    TokenExpired {
        /// The `exp` claim, seconds since the Unix epoch.
        expired_at: u64,
    },
    /// The CA served by the cert service is not the one the token was made for.
    #[error(
        "the CA from {url} has sha-256 {actual} but the bootstrap token expects {expected}; \
         the token belongs to another cloud or httpServer does not point at CloudCore: check both"
    )]
    CaHashMismatch {
        /// Where the CA came from.
        url: String,
        /// The hash in the token.
        expected: String,
        /// The hash of what was served.
        actual: String,
    },
    /// The cert service answered 401.
    #[error("{url} refused the {credential} (401: {message}); {advice}")]
    Unauthorized {
        /// The request.
        url: String,
        /// `bootstrap token` or `current edge certificate`.
        credential: &'static str,
        /// The server's plain-text reason.
        message: String,
        /// What to do about it.
        advice: &'static str,
    },
    /// The cert service answered with another non-200 status.
    #[error("{url} answered {status}: {message}")]
    HttpStatus {
        /// The request.
        url: String,
        /// The status code.
        status: u16,
        /// The server's plain-text reason.
        message: String,
    },
    /// The server certificate does not name the host that was dialed (or `tlsServerName`);
    /// the same report the WebSocket dial gives.
    #[error(transparent)]
    ServerNameMismatch(#[from] crate::error::NameMismatch),
    /// The server certificate is outside its validity period.
    #[error(
        "the server certificate of {url} is not valid now: {detail}; renew CloudCore's certificate"
    )]
    ServerCertExpired {
        /// The request.
        url: String,
        /// rustls' account of the dates.
        detail: String,
    },
    /// Any other TLS failure.
    #[error("tls handshake with {url} failed")]
    Tls {
        /// The request.
        url: String,
        /// The TLS error.
        #[source]
        source: rustls::Error,
    },
    /// TCP connect, or a read or write, failed.
    #[error("connecting to {url} failed")]
    Connect {
        /// The request.
        url: String,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The HTTP exchange failed.
    #[error("http exchange with {url} failed")]
    Http {
        /// The request.
        url: String,
        /// The HTTP error.
        #[source]
        source: hyper::Error,
    },
    /// A step did not finish in time.
    #[error("{what} with {url} did not finish within {after:?}")]
    Timeout {
        /// The request.
        url: String,
        /// The step.
        what: &'static str,
        /// The limit.
        after: Duration,
    },
    /// The response body is larger than allowed.
    #[error("the answer from {url} is larger than {limit} bytes")]
    BodyTooLarge {
        /// The request.
        url: String,
        /// The limit.
        limit: usize,
    },
    /// `httpServer` is not an `https://host:port` URL.
    #[error(
        "modules.edgeHub.httpServer {url:?} is not usable: {why}; expected https://<host>:<port>"
    )]
    BadUrl {
        /// The configured value.
        url: String,
        /// What is wrong.
        why: String,
    },
    /// A certificate or key (received or on disk) could not be used.
    #[error("{what} from {origin} is not usable: {why}")]
    BadMaterial {
        /// `CA certificate`, `edge certificate`, `edge key`.
        what: &'static str,
        /// The file or URL it came from.
        origin: String,
        /// What is wrong.
        why: String,
    },
    /// The key or CSR could not be made.
    #[error("creating the edge key and certificate request failed: {0}")]
    KeyGeneration(String),
    /// A file could not be read or written.
    #[error("{action} {path} failed")]
    Io {
        /// `reading`, `writing`, `creating directory` ...
        action: &'static str,
        /// The file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The config file could not be edited to remove the token.
    #[error(
        "removing the bootstrap token from {path} failed: {why}; remove the token value by hand"
    )]
    ConfigEdit {
        /// The config file.
        path: PathBuf,
        /// What is wrong.
        why: String,
    },
    /// Shutdown was requested.
    #[error("cancelled by shutdown")]
    Cancelled,
}

impl CertError {
    /// True when retrying cannot help until an operator changes something (token, CA, URL);
    /// such failures are logged at error level, the others at warn.
    pub fn needs_operator(&self) -> bool {
        matches!(
            self,
            Self::TokenMissing { .. }
                | Self::TokenFormat { .. }
                | Self::TokenExpired { .. }
                | Self::CaHashMismatch { .. }
                | Self::Unauthorized { .. }
                | Self::ServerNameMismatch(_)
                | Self::ServerCertExpired { .. }
                | Self::BadUrl { .. }
                | Self::ConfigEdit { .. }
        )
    }
}

/// An error with its whole `source` chain, for one log field.
pub(crate) struct Chain<'a>(pub(crate) &'a (dyn std::error::Error + 'static));

impl fmt::Display for Chain<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)?;
        let mut next = self.0.source();
        while let Some(cause) = next {
            write!(f, ": {cause}")?;
            next = cause.source();
        }
        Ok(())
    }
}
