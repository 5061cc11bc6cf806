//! Which certificates a TLS peer may present — a receiver's https endpoint, or the broker behind
//! an `amqps://` URL: the public web PKI, plus the private CAs an operator names in
//! `delivery.extra_ca_file` or `broker.extra_ca_file`.
//!
//! The roots are webpki's bundled Mozilla set rather than the host's store, so the daemon trusts
//! the same authorities on every host and inside a sandbox that hides `/etc/ssl`. Peers on a
//! private PKI are the exception that the `extra_ca_file` keys cover; their CA is added to the
//! bundled set, never replacing it. Both keys are checked by config validation (so by
//! `check-config` and at start): a bad file stops the daemon instead of failing every connection
//! later. One function builds the client configuration of both sides, so deliveries and the
//! broker connection trust, and refuse, the same way.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::pki_types::pem::{self, PemObject as _};
use rustls::pki_types::CertificateDer;
use rustls::{ClientConfig, RootCertStore};

/// Why `delivery.extra_ca_file` cannot be used. Each message names the file.
#[derive(Debug, thiserror::Error)]
pub enum CaFileError {
    #[error("cannot read {}: {source}", path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{} is not valid PEM: {source}", path.display())]
    Pem { path: PathBuf, source: pem::Error },
    #[error("{} holds no certificate (expected -----BEGIN CERTIFICATE----- blocks)", path.display())]
    Empty { path: PathBuf },
    #[error("certificate {index} of {} is not usable as a CA: {source}", path.display())]
    NotCa {
        path: PathBuf,
        /// 1-based, in file order.
        index: usize,
        source: rustls::Error,
    },
}

/// The trust anchors in a PEM file of one or more CA certificates.
pub fn read_ca_file(path: &Path) -> Result<RootCertStore, CaFileError> {
    let text = std::fs::read(path).map_err(|source| CaFileError::Read {
        path: path.to_owned(),
        source,
    })?;
    let mut roots = RootCertStore::empty();
    for (index, cert) in CertificateDer::pem_slice_iter(&text).enumerate() {
        let cert = cert.map_err(|source| CaFileError::Pem {
            path: path.to_owned(),
            source,
        })?;
        roots.add(cert).map_err(|source| CaFileError::NotCa {
            path: path.to_owned(),
            index: index + 1,
            source,
        })?;
    }
    if roots.is_empty() {
        return Err(CaFileError::Empty {
            path: path.to_owned(),
        });
    }
    Ok(roots)
}

/// A TLS client configuration: TLS 1.2 and 1.3 with ring, the bundled roots and the extra CAs
/// of `extra_ca_file`, which `key` names in errors (`delivery.extra_ca_file`). The provider is
/// named rather than taken from the process default, so nothing else in the process can change
/// which crypto is used, and a missing one is an error here instead of a panic inside rustls.
pub fn client_config(
    key: &'static str,
    extra_ca_file: Option<&Path>,
) -> Result<ClientConfig, TlsSetupError> {
    let roots = roots(extra_ca_file).map_err(|source| TlsSetupError::CaFile { key, source })?;
    Ok(
        ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()?
            .with_root_certificates(roots)
            .with_no_client_auth(),
    )
}

fn roots(extra_ca_file: Option<&Path>) -> Result<RootCertStore, CaFileError> {
    let mut roots = RootCertStore {
        roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
    };
    if let Some(path) = extra_ca_file {
        roots.roots.extend(read_ca_file(path)?.roots);
    }
    Ok(roots)
}

/// The TLS side of the client could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum TlsSetupError {
    #[error("{key}: {source}")]
    CaFile {
        key: &'static str,
        source: CaFileError,
    },
    #[error("cannot set up TLS: {0}")]
    Rustls(#[from] rustls::Error),
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ca_pem() -> String {
        let key = rcgen::KeyPair::generate().expect("key");
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params.self_signed(&key).expect("self-signed CA").pem()
    }

    #[test]
    fn ca_files_are_read_whole_and_refused_with_the_file_named() {
        let dir = tempfile::tempdir().expect("temp dir");
        let write = |name: &str, text: &str| {
            let path = dir.path().join(name);
            std::fs::write(&path, text).expect("write");
            path
        };

        let two = write("two.pem", &format!("{}\n{}", ca_pem(), ca_pem()));
        assert_eq!(read_ca_file(&two).map(|roots| roots.len()).ok(), Some(2));

        type IsExpected = fn(&CaFileError) -> bool;
        let cases: [(&str, PathBuf, IsExpected); 4] = [
            ("missing", dir.path().join("missing.pem"), |e| {
                matches!(e, CaFileError::Read { .. })
            }),
            ("empty", write("empty.pem", "# nothing here\n"), |e| {
                matches!(e, CaFileError::Empty { .. })
            }),
            (
                "broken base64",
                write(
                    "broken.pem",
                    "-----BEGIN CERTIFICATE-----\n!!!\n-----END CERTIFICATE-----\n",
                ),
                |e| matches!(e, CaFileError::Pem { .. }),
            ),
            (
                "not a certificate",
                write(
                    "junk.pem",
                    "-----BEGIN CERTIFICATE-----\naGVsbG8=\n-----END CERTIFICATE-----\n",
                ),
                |e| matches!(e, CaFileError::NotCa { index: 1, .. }),
            ),
        ];
        for (name, path, is_expected) in cases {
            match read_ca_file(&path) {
                Ok(_) => panic!("{name}: accepted"),
                Err(error) => {
                    assert!(is_expected(&error), "{name}: {error:?}");
                    let message = error.to_string();
                    assert!(
                        message.contains(&path.display().to_string()),
                        "{name}: {message}"
                    );
                }
            }
        }
    }

    #[test]
    fn extra_cas_are_added_to_the_bundled_roots() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("ca.pem");
        std::fs::write(&path, ca_pem()).expect("write");
        let bundled = webpki_roots::TLS_SERVER_ROOTS.len();
        assert_eq!(roots(None).map(|r| r.len()).ok(), Some(bundled));
        assert_eq!(roots(Some(&path)).map(|r| r.len()).ok(), Some(bundled + 1));
        assert!(client_config("delivery.extra_ca_file", Some(&path)).is_ok());
        let missing = client_config(
            "broker.extra_ca_file",
            Some(&dir.path().join("missing.pem")),
        );
        assert!(matches!(
            &missing,
            Err(TlsSetupError::CaFile {
                key: "broker.extra_ca_file",
                source: CaFileError::Read { .. }
            })
        ));
        let message = missing.err().map(|e| e.to_string()).unwrap_or_default();
        assert!(
            message.starts_with("broker.extra_ca_file: cannot read "),
            "{message}"
        );
    }
}
