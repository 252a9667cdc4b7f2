//! The certificate files on disk: PEM in and out, the SEC1 key form, atomic writes with modes,
//! and loading the current pair with the checks that decide whether to bootstrap.

use std::io::Write as _;
use std::os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject as _;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use crate::cert_error::CertError;

/// Mode of the key file.
pub(crate) const KEY_MODE: u32 = 0o600;
/// Mode of the certificate and CA files (public material).
pub(crate) const CERT_MODE: u32 = 0o644;
/// Mode of directories this module creates.
pub(crate) const DIR_MODE: u32 = 0o700;

/// Facts about the edge certificate in use.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertInfo {
    /// Start of validity.
    pub not_before: SystemTime,
    /// End of validity (for an expiry metric).
    pub not_after: SystemTime,
    /// Serial number, lowercase hex.
    pub serial: String,
}

/// What a certificate says about itself.
#[derive(Debug, Clone)]
pub(crate) struct Parsed {
    pub(crate) info: CertInfo,
    pub(crate) common_name: Option<String>,
}

/// Parses a DER certificate.
pub(crate) fn parse_cert(
    der: &[u8],
    what: &'static str,
    origin: &str,
) -> Result<Parsed, CertError> {
    let bad = |why: String| CertError::BadMaterial {
        what,
        origin: origin.to_owned(),
        why,
    };
    let (_, cert) = x509_parser::parse_x509_certificate(der)
        .map_err(|e| bad(format!("not an x.509 certificate ({e})")))?;
    let validity = cert.validity();
    let common_name = cert
        .subject()
        .iter_common_name()
        .next()
        .and_then(|cn| cn.as_str().ok())
        .map(str::to_owned);
    Ok(Parsed {
        info: CertInfo {
            not_before: unix_to_system(validity.not_before.timestamp()),
            not_after: unix_to_system(validity.not_after.timestamp()),
            serial: cert
                .raw_serial()
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect(),
        },
        common_name,
    })
}

fn unix_to_system(secs: i64) -> SystemTime {
    let magnitude = Duration::from_secs(secs.unsigned_abs());
    if secs >= 0 {
        SystemTime::UNIX_EPOCH
            .checked_add(magnitude)
            .unwrap_or(SystemTime::UNIX_EPOCH)
    } else {
        SystemTime::UNIX_EPOCH
            .checked_sub(magnitude)
            .unwrap_or(SystemTime::UNIX_EPOCH)
    }
}

/// The CN an edge certificate must carry.
pub(crate) fn node_common_name(node_name: &str) -> String {
    format!("system:node:{node_name}")
}

/// PEM text of one DER object.
pub(crate) fn pem(label: &str, der: &[u8]) -> String {
    let b64 = STANDARD.encode(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    let mut rest = b64.as_str();
    while !rest.is_empty() {
        let (line, tail) = rest.split_at(rest.len().min(64));
        out.push_str(line);
        out.push('\n');
        rest = tail;
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

/// The current pair, checked to belong together, with the facts about it.
pub(crate) struct CurrentPair {
    pub(crate) chain: Vec<CertificateDer<'static>>,
    pub(crate) key: PrivateKeyDer<'static>,
    pub(crate) info: CertInfo,
}

/// Loads `cert_file` and `key_file` and checks that they belong together, that the leaf's CN is
/// `system:node:<node>` and that it is valid at `now`. The error says why the pair is unusable.
pub(crate) async fn load_pair(
    cert_file: &Path,
    key_file: &Path,
    node_name: &str,
    now: SystemTime,
) -> Result<CurrentPair, CertError> {
    let cert_pem = read(cert_file, "reading the edge certificate").await?;
    let key_pem = read(key_file, "reading the edge key").await?;
    let origin = cert_file.display().to_string();
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&cert_pem)
        .collect::<Result<_, _>>()
        .map_err(|e| CertError::BadMaterial {
            what: "edge certificate",
            origin: origin.clone(),
            why: format!("not PEM ({e})"),
        })?;
    let Some(leaf) = chain.first() else {
        return Err(CertError::BadMaterial {
            what: "edge certificate",
            origin,
            why: "no CERTIFICATE block".to_owned(),
        });
    };
    let parsed = parse_cert(leaf, "edge certificate", &origin)?;
    let want = node_common_name(node_name);
    if parsed.common_name.as_deref() != Some(want.as_str()) {
        return Err(CertError::BadMaterial {
            what: "edge certificate",
            origin,
            why: format!(
                "its CN is {:?}, expected {want:?}",
                parsed.common_name.unwrap_or_default()
            ),
        });
    }
    if now >= parsed.info.not_after {
        return Err(CertError::BadMaterial {
            what: "edge certificate",
            origin,
            why: "it has expired".to_owned(),
        });
    }
    let key = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|e| CertError::BadMaterial {
        what: "edge key",
        origin: key_file.display().to_string(),
        why: format!("no PEM private key ({e})"),
    })?;
    certified_key(chain.clone(), key.clone_key(), &origin)?;
    Ok(CurrentPair {
        chain,
        key,
        info: parsed.info,
    })
}

/// Joins a chain and key into a rustls identity, refusing a key that is not the certificate's.
pub(crate) fn certified_key(
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
    origin: &str,
) -> Result<Arc<CertifiedKey>, CertError> {
    let provider = rustls::crypto::ring::default_provider();
    let bad = |why: String| CertError::BadMaterial {
        what: "edge key",
        origin: origin.to_owned(),
        why,
    };
    let signing = provider
        .key_provider
        .load_private_key(key)
        .map_err(|e| bad(format!("unsupported key ({e})")))?;
    let certified = CertifiedKey::new(chain, signing);
    certified
        .keys_match()
        .map_err(|e| bad(format!("it does not belong to the certificate ({e})")))?;
    Ok(Arc::new(certified))
}

/// Reads the CA file as DER certificates.
pub(crate) async fn load_ca(ca_file: &Path) -> Result<Vec<CertificateDer<'static>>, CertError> {
    let text = read(ca_file, "reading the CA certificate").await?;
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&text)
        .collect::<Result<_, _>>()
        .map_err(|e| CertError::BadMaterial {
            what: "CA certificate",
            origin: ca_file.display().to_string(),
            why: format!("not PEM ({e})"),
        })?;
    if certs.is_empty() {
        return Err(CertError::BadMaterial {
            what: "CA certificate",
            origin: ca_file.display().to_string(),
            why: "no CERTIFICATE block".to_owned(),
        });
    }
    Ok(certs)
}

async fn read(path: &Path, action: &'static str) -> Result<Vec<u8>, CertError> {
    tokio::fs::read(path).await.map_err(|source| CertError::Io {
        action,
        path: path.to_path_buf(),
        source,
    })
}

/// One file to replace.
pub(crate) struct NewFile {
    pub(crate) path: PathBuf,
    pub(crate) contents: Vec<u8>,
    pub(crate) mode: u32,
}

/// Replaces the files as one step as far as a filesystem allows: every file is first written
/// and fsynced to a temporary name beside its target, then all are renamed in order and the
/// directories fsynced. Missing directories are created with mode 0700. Runs on the blocking
/// pool.
pub(crate) async fn replace_files(files: Vec<NewFile>) -> Result<(), CertError> {
    tokio::task::spawn_blocking(move || replace_files_blocking(&files))
        .await
        .map_err(|e| CertError::Io {
            action: "running the file writer",
            path: PathBuf::new(),
            source: std::io::Error::other(e.to_string()),
        })?
}

fn replace_files_blocking(files: &[NewFile]) -> Result<(), CertError> {
    let mut staged: Vec<(PathBuf, &Path)> = Vec::with_capacity(files.len());
    let result = (|| {
        for file in files {
            let dir = parent(&file.path);
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(DIR_MODE)
                .create(dir)
                .map_err(|source| CertError::Io {
                    action: "creating directory",
                    path: dir.to_path_buf(),
                    source,
                })?;
            let tmp = temp_name(&file.path);
            let io = |source| CertError::Io {
                action: "writing",
                path: tmp.clone(),
                source,
            };
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(file.mode)
                .open(&tmp)
                .map_err(io)?;
            staged.push((tmp.clone(), &file.path));
            // The umask may have narrowed the mode; set it exactly.
            f.set_permissions(std::fs::Permissions::from_mode(file.mode))
                .map_err(io)?;
            f.write_all(&file.contents).map_err(io)?;
            f.sync_all().map_err(io)?;
        }
        for (tmp, target) in &staged {
            std::fs::rename(tmp, target).map_err(|source| CertError::Io {
                action: "renaming into place",
                path: target.to_path_buf(),
                source,
            })?;
        }
        for (_, target) in &staged {
            let dir = parent(target);
            std::fs::File::open(dir)
                .and_then(|d| d.sync_all())
                .map_err(|source| CertError::Io {
                    action: "syncing directory",
                    path: dir.to_path_buf(),
                    source,
                })?;
        }
        Ok(())
    })();
    if result.is_err() {
        for (tmp, _) in &staged {
            // Best effort: a renamed file no longer exists under its temporary name.
            let _ = std::fs::remove_file(tmp);
        }
    }
    result
}

fn parent(path: &Path) -> &Path {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}

fn temp_name(path: &Path) -> PathBuf {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let salt: u64 = rand::random();
    parent(path).join(format!(".{name}.{}.{salt:016x}.tmp", std::process::id()))
}

/// Converts ring's PKCS#8 P-256 key to SEC1 `ECPrivateKey` DER with the curve named in the
/// `[0] parameters` field, the form KubeEdge writes (`EC PRIVATE KEY`) and Go can read back.
pub(crate) fn sec1_from_pkcs8(pkcs8: &[u8]) -> Result<Vec<u8>, String> {
    // PrivateKeyInfo ::= SEQUENCE { version INTEGER, algorithm AlgorithmIdentifier,
    //                               privateKey OCTET STRING (containing ECPrivateKey), ... }
    let (info, _) = der_take(pkcs8, 0x30)?;
    let (_version, rest) = der_take(info, 0x02)?;
    let (_algorithm, rest) = der_take(rest, 0x30)?;
    let (inner, _) = der_take(rest, 0x04)?;
    // ECPrivateKey ::= SEQUENCE { version INTEGER (1), privateKey OCTET STRING,
    //                             parameters [0] OPTIONAL, publicKey [1] OPTIONAL }
    let (ec, _) = der_take(inner, 0x30)?;
    let (version, rest) = der_take_raw(ec, 0x02)?;
    let (private, rest) = der_take_raw(rest, 0x04)?;
    let (params, rest) = match der_take_raw(rest, 0xa0) {
        Ok((p, r)) => (p.to_vec(), r),
        Err(_) => (P256_PARAMS.to_vec(), rest),
    };
    let mut body = Vec::with_capacity(ec.len() + P256_PARAMS.len());
    body.extend_from_slice(version);
    body.extend_from_slice(private);
    body.extend_from_slice(&params);
    body.extend_from_slice(rest);
    let mut out = vec![0x30];
    der_len(body.len(), &mut out);
    out.extend_from_slice(&body);
    Ok(out)
}

/// `[0] { OID 1.2.840.10045.3.1.7 (prime256v1) }`.
const P256_PARAMS: [u8; 12] = [
    0xa0, 0x0a, 0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07,
];

/// Splits one TLV with `tag` off `input`: (contents, rest).
fn der_take(input: &[u8], tag: u8) -> Result<(&[u8], &[u8]), String> {
    let (whole, rest) = der_take_raw(input, tag)?;
    let (header, _) = der_header(whole)?;
    Ok((whole.get(header..).ok_or("der ended early")?, rest))
}

/// Splits one TLV with `tag` off `input`: (whole TLV, rest).
fn der_take_raw(input: &[u8], tag: u8) -> Result<(&[u8], &[u8]), String> {
    match input.first() {
        Some(t) if *t == tag => {}
        Some(t) => return Err(format!("expected der tag {tag:#04x}, found {t:#04x}")),
        None => return Err("der ended early".to_owned()),
    }
    let (header, len) = der_header(input)?;
    let end = header.checked_add(len).ok_or("der length overflow")?;
    if end > input.len() {
        return Err("der length runs past the end".to_owned());
    }
    Ok(input.split_at(end))
}

/// (header length, content length) of the TLV at the start of `input`.
fn der_header(input: &[u8]) -> Result<(usize, usize), String> {
    let first = *input.get(1).ok_or("der ended early")?;
    if first < 0x80 {
        return Ok((2, usize::from(first)));
    }
    let n = usize::from(first & 0x7f);
    if n == 0 || n > 4 {
        return Err("unsupported der length".to_owned());
    }
    let bytes = input.get(2..2 + n).ok_or("der ended early")?;
    let len = bytes
        .iter()
        .fold(0usize, |acc, b| (acc << 8) | usize::from(*b));
    Ok((2 + n, len))
}

fn der_len(len: usize, out: &mut Vec<u8>) {
    if len < 0x80 {
        out.push(len as u8);
    } else {
        let bytes = len.to_be_bytes();
        let skip = bytes.iter().take_while(|b| **b == 0).count();
        let significant = bytes.get(skip..).unwrap_or_default();
        out.push(0x80 | significant.len() as u8);
        out.extend_from_slice(significant);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sec1_key_names_the_curve_and_loads_in_rustls() {
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let sec1 = sec1_from_pkcs8(&key.serialize_der()).unwrap();
        assert!(sec1.windows(P256_PARAMS.len()).any(|w| w == P256_PARAMS));
        let pem_text = pem("EC PRIVATE KEY", &sec1);
        let parsed = PrivateKeyDer::from_pem_slice(pem_text.as_bytes()).unwrap();
        assert!(matches!(parsed, PrivateKeyDer::Sec1(_)));
        let signer = rustls::crypto::ring::sign::any_ecdsa_type(&parsed).unwrap();
        let spki = signer.public_key().unwrap();
        assert!(spki.as_ref().ends_with(key.public_key_raw()));
    }

    #[test]
    fn der_parser_refuses_garbage() {
        for input in [
            &[][..],
            &[0x30],
            &[0x30, 0x85, 0, 0, 0, 0, 0],
            &[0x04, 0x01, 0x00],
        ] {
            assert!(sec1_from_pkcs8(input).is_err());
        }
    }

    #[test]
    fn pem_wraps_at_64() {
        let text = pem("CERTIFICATE", &[7u8; 100]);
        assert!(
            text.lines()
                .all(|l| l.len() <= 64 || l.starts_with("-----"))
        );
        let back = CertificateDer::from_pem_slice(text.as_bytes()).unwrap();
        assert_eq!(back.as_ref(), &[7u8; 100][..]);
    }

    #[tokio::test]
    async fn replace_files_sets_modes_and_creates_private_dirs() {
        let dir = tempfile::tempdir().unwrap();
        let key = dir.path().join("new/certs/server.key");
        let cert = dir.path().join("new/certs/server.crt");
        std::fs::create_dir_all(dir.path().join("new")).unwrap();
        replace_files(vec![
            NewFile {
                path: key.clone(),
                contents: b"k".to_vec(),
                mode: KEY_MODE,
            },
            NewFile {
                path: cert.clone(),
                contents: b"c".to_vec(),
                mode: CERT_MODE,
            },
        ])
        .await
        .unwrap();
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&key), 0o600);
        assert_eq!(mode(&cert), 0o644);
        assert_eq!(mode(&dir.path().join("new/certs")), 0o700);
        // Replacing keeps no temporary files around.
        replace_files(vec![NewFile {
            path: key.clone(),
            contents: b"k2".to_vec(),
            mode: KEY_MODE,
        }])
        .await
        .unwrap();
        assert_eq!(std::fs::read(&key).unwrap(), b"k2");
        let names: Vec<_> = std::fs::read_dir(dir.path().join("new/certs"))
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names.len(), 2, "{names:?}");
    }
}
