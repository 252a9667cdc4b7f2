//! Test PKI with rcgen: a CloudHub CA, a server certificate with chosen SANs and an edge client
//! certificate shaped like the ones CloudHub issues (CN `system:node:<node>`, O `system:nodes`,
//! EKU ClientAuth). Keys are P-256 and are written as SEC1 `EC PRIVATE KEY`, as KubeEdge does.

use std::net::IpAddr;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType, string::Ia5String,
};

/// What to put in the certificates.
#[derive(Debug, Clone)]
pub struct PkiOptions {
    /// Node name of the edge certificate.
    pub node: String,
    /// Server SANs: each entry is an IP address or a DNS name.
    pub sans: Vec<String>,
    /// Add an empty DNS SAN to the server certificate, as CloudCore's default `dnsNames: [""]` does.
    pub empty_dns_san: bool,
}

impl PkiOptions {
    /// Server SANs `127.0.0.1` and `localhost`, no empty SAN.
    pub fn new(node: &str) -> Self {
        Self {
            node: node.to_owned(),
            sans: vec!["127.0.0.1".to_owned(), "localhost".to_owned()],
            empty_dns_san: false,
        }
    }
}

/// A further edge's certificate and key (PEM), signed by the same CA.
#[derive(Debug, Clone)]
pub struct ExtraEdge {
    /// Node name (CN `system:node:NODE`).
    pub node: String,
    /// Certificate.
    pub crt: String,
    /// Key, `EC PRIVATE KEY`.
    pub key: String,
}

/// PEM text of every file.
#[derive(Debug, Clone)]
pub struct Pki {
    /// CA certificate.
    pub ca_crt: String,
    /// CA key.
    pub ca_key: String,
    /// CloudHub server certificate.
    pub server_crt: String,
    /// CloudHub server key.
    pub server_key: String,
    /// Edge client certificate.
    pub edge_crt: String,
    /// Edge client key.
    pub edge_key: String,
}

/// Where [`Pki::write`] put the files.
#[derive(Debug, Clone)]
pub struct PkiPaths {
    /// `ca.crt`
    pub ca_crt: PathBuf,
    /// `ca.key`
    pub ca_key: PathBuf,
    /// `server.crt`
    pub server_crt: PathBuf,
    /// `server.key`
    pub server_key: PathBuf,
    /// `edge.crt`
    pub edge_crt: PathBuf,
    /// `edge.key`
    pub edge_key: PathBuf,
}

impl PkiPaths {
    /// The file names inside `dir`.
    pub fn in_dir(dir: &Path) -> Self {
        Self {
            ca_crt: dir.join("ca.crt"),
            ca_key: dir.join("ca.key"),
            server_crt: dir.join("server.crt"),
            server_key: dir.join("server.key"),
            edge_crt: dir.join("edge.crt"),
            edge_key: dir.join("edge.key"),
        }
    }
}

impl Pki {
    /// Generates a CA, a server certificate and an edge certificate.
    pub fn generate(opts: &PkiOptions) -> Result<Self> {
        Ok(Self::generate_with_extra_edges(opts, &[])?.0)
    }

    /// As [`Pki::generate`], plus an edge certificate and key (PEM) for each further node,
    /// signed by the same CA: several edges of one cloud each need their own, since edgecore
    /// checks the certificate's CN against its node name.
    pub fn generate_with_extra_edges(
        opts: &PkiOptions,
        extra_nodes: &[String],
    ) -> Result<(Self, Vec<ExtraEdge>)> {
        let ca_key = KeyPair::generate().context("ca key")?;
        let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, "KubeEdge");
        ca_params.distinguished_name = dn;
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let ca_cert = ca_params.self_signed(&ca_key).context("ca certificate")?;

        let server_key = KeyPair::generate().context("server key")?;
        let mut server_params = CertificateParams::new(Vec::<String>::new())?;
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, "KubeEdge");
        server_params.distinguished_name = dn;
        for san in &opts.sans {
            server_params.subject_alt_names.push(san_of(san)?);
        }
        if opts.empty_dns_san {
            server_params
                .subject_alt_names
                .push(SanType::DnsName(Ia5String::try_from("")?));
        }
        server_params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        server_params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];

        let edge_key = KeyPair::generate().context("edge key")?;
        let edge_params = edge_params_for(&opts.node)?;

        let ca_key_pem = sec1_pem(&ca_key)?;
        let issuer = Issuer::new(ca_params, ca_key);
        let server_cert = server_params
            .signed_by(&server_key, &issuer)
            .context("server certificate")?;
        let edge_cert = edge_params
            .signed_by(&edge_key, &issuer)
            .context("edge certificate")?;
        let mut extras = Vec::with_capacity(extra_nodes.len());
        for node in extra_nodes {
            let key = KeyPair::generate().context("edge key")?;
            let cert = edge_params_for(node)?
                .signed_by(&key, &issuer)
                .context("edge certificate")?;
            extras.push(ExtraEdge {
                node: node.clone(),
                crt: cert.pem(),
                key: sec1_pem(&key)?,
            });
        }

        let pki = Self {
            ca_crt: ca_cert.pem(),
            ca_key: ca_key_pem,
            server_crt: server_cert.pem(),
            server_key: sec1_pem(&server_key)?,
            edge_crt: edge_cert.pem(),
            edge_key: sec1_pem(&edge_key)?,
        };
        Ok((pki, extras))
    }

    /// Writes the six PEM files into `dir` (created if missing).
    pub fn write(&self, dir: &Path) -> Result<PkiPaths> {
        std::fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
        let paths = PkiPaths::in_dir(dir);
        for (path, text) in [
            (&paths.ca_crt, &self.ca_crt),
            (&paths.ca_key, &self.ca_key),
            (&paths.server_crt, &self.server_crt),
            (&paths.server_key, &self.server_key),
            (&paths.edge_crt, &self.edge_crt),
            (&paths.edge_key, &self.edge_key),
        ] {
            std::fs::write(path, text).with_context(|| format!("write {}", path.display()))?;
        }
        Ok(paths)
    }

    /// Reads the six files back from `dir`.
    pub fn read(dir: &Path) -> Result<Self> {
        let p = PkiPaths::in_dir(dir);
        let rd = |path: &PathBuf| {
            std::fs::read_to_string(path).with_context(|| format!("read {}", path.display()))
        };
        Ok(Self {
            ca_crt: rd(&p.ca_crt)?,
            ca_key: rd(&p.ca_key)?,
            server_crt: rd(&p.server_crt)?,
            server_key: rd(&p.server_key)?,
            edge_crt: rd(&p.edge_crt)?,
            edge_key: rd(&p.edge_key)?,
        })
    }
}

fn san_of(s: &str) -> Result<SanType> {
    Ok(match s.parse::<IpAddr>() {
        Ok(ip) => SanType::IpAddress(ip),
        Err(_) => SanType::DnsName(Ia5String::try_from(s)?),
    })
}

/// OID 1.2.840.10045.3.1.7 (prime256v1), DER-encoded with its tag.
const P256_OID: &[u8] = &[0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07];

/// The key as a SEC1 `EC PRIVATE KEY` PEM with the curve named, which Go's
/// `x509.ParseECPrivateKey` and rustls both read.
fn sec1_pem(key: &KeyPair) -> Result<String> {
    let scalar = pkcs8_p256_scalar(key.serialized_der())?;
    let public = key.public_key_raw();
    let mut body = Vec::with_capacity(128);
    body.extend_from_slice(&[0x02, 0x01, 0x01]); // version 1
    body.extend_from_slice(&der_tlv(0x04, scalar));
    body.extend_from_slice(&der_tlv(0xa0, P256_OID));
    let mut bits = vec![0u8];
    bits.extend_from_slice(public);
    body.extend_from_slice(&der_tlv(0xa1, &der_tlv(0x03, &bits)));
    let der = der_tlv(0x30, &body);
    Ok(pem_encode("EC PRIVATE KEY", &der))
}

/// The 32-byte private scalar inside ring's PKCS#8 document for a P-256 key.
fn pkcs8_p256_scalar(pkcs8: &[u8]) -> Result<&[u8]> {
    // PrivateKeyInfo ::= SEQUENCE { version, algorithm, OCTET STRING { ECPrivateKey } }
    let (outer, _) = der_read(pkcs8, 0x30)?;
    let (_, rest) = der_read(outer, 0x02)?;
    let (_, rest) = der_read(rest, 0x30)?;
    let (inner, _) = der_read(rest, 0x04)?;
    // ECPrivateKey ::= SEQUENCE { version INTEGER, privateKey OCTET STRING, ... }
    let (ec, _) = der_read(inner, 0x30)?;
    let (_, rest) = der_read(ec, 0x02)?;
    let (scalar, _) = der_read(rest, 0x04)?;
    if scalar.len() != 32 {
        bail!("unexpected P-256 scalar length {}", scalar.len());
    }
    Ok(scalar)
}

/// Reads one TLV with the given tag; returns (value, rest).
fn der_read(input: &[u8], tag: u8) -> Result<(&[u8], &[u8])> {
    let (&t, rest) = input.split_first().context("der: empty")?;
    if t != tag {
        bail!("der: tag {t:#x}, expected {tag:#x}");
    }
    let (&first, mut rest) = rest.split_first().context("der: no length")?;
    let len = if first < 0x80 {
        usize::from(first)
    } else {
        let n = usize::from(first & 0x7f);
        if n == 0 || n > 2 {
            bail!("der: unsupported length form");
        }
        let (bytes, r) = rest.split_at_checked(n).context("der: short length")?;
        rest = r;
        bytes
            .iter()
            .fold(0usize, |acc, b| (acc << 8) | usize::from(*b))
    };
    rest.split_at_checked(len).context("der: short value")
}

fn der_tlv(tag: u8, value: &[u8]) -> Vec<u8> {
    let mut out = vec![tag];
    let len = value.len();
    if len < 0x80 {
        out.push(len as u8);
    } else if len <= 0xff {
        out.extend_from_slice(&[0x81, len as u8]);
    } else {
        out.extend_from_slice(&[0x82, (len >> 8) as u8, len as u8]);
    }
    out.extend_from_slice(value);
    out
}

fn pem_encode(label: &str, der: &[u8]) -> String {
    let b64 = base64(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    for chunk in b64.as_bytes().chunks(64) {
        out.push_str(&String::from_utf8_lossy(chunk));
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

fn base64(data: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(data.len().div_ceil(3) * 4);
    for chunk in data.chunks(3) {
        let b = [
            chunk.first().copied().unwrap_or(0),
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(char::from(ALPHABET[((n >> (18 - 6 * i)) & 0x3f) as usize]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// Subject and usages of an edge certificate as CloudHub issues it.
fn edge_params_for(node: &str) -> Result<CertificateParams> {
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, format!("system:node:{node}"));
    dn.push(DnType::OrganizationName, "system:nodes");
    params.distinguished_name = dn;
    params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    Ok(params)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer};

    #[test]
    fn keys_are_sec1_and_load_in_rustls() {
        let pki = Pki::generate(&PkiOptions::new("edge-node-1")).unwrap();
        for pem in [&pki.ca_key, &pki.server_key, &pki.edge_key] {
            assert!(pem.starts_with("-----BEGIN EC PRIVATE KEY-----\n"), "{pem}");
            let key = PrivateKeyDer::from_pem_slice(pem.as_bytes()).unwrap();
            assert!(matches!(key, PrivateKeyDer::Sec1(_)));
            rustls::crypto::ring::sign::any_supported_type(&key).unwrap();
        }
        for pem in [&pki.ca_crt, &pki.server_crt, &pki.edge_crt] {
            CertificateDer::from_pem_slice(pem.as_bytes()).unwrap();
        }
    }

    #[test]
    fn base64_matches_known_values() {
        assert_eq!(base64(b""), "");
        assert_eq!(base64(b"f"), "Zg==");
        assert_eq!(base64(b"fo"), "Zm8=");
        assert_eq!(base64(b"foo"), "Zm9v");
        assert_eq!(base64(b"foobar"), "Zm9vYmFy");
    }
}
