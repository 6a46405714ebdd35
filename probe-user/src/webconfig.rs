//! `--web.config.file`: TLS and basic auth for the endpoint, in the file format of Prometheus'
//! exporter-toolkit, so that the file a site already writes for node_exporter works here.
//!
//! ```yaml
//! tls_server_config:
//!   cert_file: server.crt          # relative paths are relative to this file
//!   key_file: server.key
//!   client_auth_type: RequireAndVerifyClientCert   # optional, with client_ca_file
//!   client_ca_file: clients-ca.crt
//!   min_version: TLS12             # or TLS13
//! basic_auth_users:
//!   prometheus: $2y$10$...         # bcrypt hash (htpasswd -nBC 10 "" | tr -d ':\n')
//! ```
//!
//! Keys the toolkit has and probe does not implement (cipher_suites, curve_preferences,
//! http_server_config, ...) are rejected by name rather than ignored: a setting that silently
//! does nothing is worse than an error.

use std::{
    collections::{HashMap, HashSet},
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
};

use anyhow::{bail, Context as _};
use base64::Engine as _;
use rustls::{
    pki_types::{pem::PemObject as _, CertificateDer, PrivateKeyDer},
    server::WebPkiClientVerifier,
    RootCertStore, ServerConfig,
};
use serde::Deserialize;

/// A loaded web config: the TLS server config if TLS is on, and the users.
#[derive(Debug, Default)]
pub struct WebConfig {
    pub tls: Option<Arc<ServerConfig>>,
    users: HashMap<String, String>,
    /// Credentials already found good: bcrypt is slow on purpose (~50 ms at cost 10), and
    /// Prometheus sends the same credentials on every scrape. Keyed by user and a hash of the
    /// password. Failures are not kept, so wrong guesses cannot push good entries out.
    verified: Mutex<HashSet<(String, [u8; 32])>>,
}

const MAX_CACHED: usize = 256;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    tls_server_config: Option<TlsFile>,
    basic_auth_users: Option<HashMap<String, String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TlsFile {
    cert_file: PathBuf,
    key_file: PathBuf,
    #[serde(default)]
    client_auth_type: ClientAuth,
    client_ca_file: Option<PathBuf>,
    min_version: Option<TlsVersion>,
    max_version: Option<TlsVersion>,
}

#[derive(Deserialize, Default, Clone, Copy, PartialEq, Eq, Debug)]
enum ClientAuth {
    #[default]
    NoClientCert,
    RequestClientCert,
    RequireAnyClientCert,
    VerifyClientCertIfGiven,
    RequireAndVerifyClientCert,
}

#[derive(Deserialize, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Debug)]
enum TlsVersion {
    TLS12,
    TLS13,
}

impl WebConfig {
    /// Reads and checks the file, the certificates and keys it names, and the password hashes.
    pub fn load(path: &Path) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read web config {}", path.display()))?;
        let base = path.parent().unwrap_or(Path::new("."));
        Self::parse(&text, base).with_context(|| format!("web config {}", path.display()))
    }

    /// Parses a web config; relative paths in it are taken from `base`.
    pub fn parse(text: &str, base: &Path) -> anyhow::Result<Self> {
        let file: File = if text.trim().is_empty() {
            // An empty file is valid for the toolkit: plain HTTP, no auth.
            File {
                tls_server_config: None,
                basic_auth_users: None,
            }
        } else {
            serde_saphyr::from_str(text).map_err(|e| anyhow::anyhow!("{e}"))?
        };
        let users = file.basic_auth_users.unwrap_or_default();
        for (user, hash) in &users {
            if user.contains(':') {
                bail!(
                    "basic_auth_users: user {user:?} contains ':', which basic auth cannot carry"
                );
            }
            hash.parse::<bcrypt::HashParts>().map_err(|e| {
                anyhow::anyhow!("basic_auth_users: {user}: not a bcrypt hash ({e})")
            })?;
        }
        let tls = file
            .tls_server_config
            .map(|t| tls_config(&t, base).map(Arc::new))
            .transpose()
            .context("tls_server_config")?;
        Ok(Self {
            tls,
            users,
            verified: Mutex::default(),
        })
    }

    /// Whether requests must carry basic auth.
    pub fn needs_auth(&self) -> bool {
        !self.users.is_empty()
    }

    /// The answer for an `Authorization` header value if it is known without bcrypt: no auth
    /// needed, no usable credentials, or credentials already found good. Cheap: call it first.
    pub fn known(&self, header: Option<&[u8]>) -> Option<bool> {
        if !self.needs_auth() {
            return Some(true);
        }
        let Some((user, password)) = header.and_then(basic_credentials) else {
            return Some(false);
        };
        self.cache()
            .contains(&(user, sha256(password.as_bytes())))
            .then_some(true)
    }

    /// Checks an `Authorization` header value. Slow (bcrypt) unless [`WebConfig::known`] knows
    /// the answer: call it off the async runtime, one at a time.
    pub fn authorized(&self, header: Option<&[u8]>) -> bool {
        if let Some(ok) = self.known(header) {
            return ok;
        }
        let Some((user, password)) = header.and_then(basic_credentials) else {
            return false;
        };
        let ok = match self.users.get(&user) {
            Some(hash) => bcrypt::verify(&password, hash).unwrap_or(false),
            None => {
                // The same work for an unknown user, so that timing does not tell users apart.
                let _ = bcrypt::verify(&password, DUMMY_HASH);
                false
            }
        };
        if ok {
            let mut cache = self.cache();
            if cache.len() >= MAX_CACHED {
                cache.clear();
            }
            cache.insert((user, sha256(password.as_bytes())));
        }
        ok
    }

    fn cache(&self) -> std::sync::MutexGuard<'_, HashSet<(String, [u8; 32])>> {
        self.verified
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// bcrypt of a random password at cost 10 (the toolkit's recommended cost).
const DUMMY_HASH: &str = "$2b$10$wdjcChiQz6EsmW/4NeL/XOtogSLS/ZCHBPH0/kU.a9qUBMdaGIYuW";

/// `Basic base64(user:password)` -> (user, password).
fn basic_credentials(header: &[u8]) -> Option<(String, String)> {
    let header = std::str::from_utf8(header).ok()?;
    let (scheme, value) = header.trim().split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(value.trim())
        .ok()?;
    let decoded = String::from_utf8(decoded).ok()?;
    let (user, password) = decoded.split_once(':')?;
    Some((user.to_string(), password.to_string()))
}

fn sha256(data: &[u8]) -> [u8; 32] {
    let digest = ring::digest::digest(&ring::digest::SHA256, data);
    let mut out = [0u8; 32];
    out.copy_from_slice(digest.as_ref());
    out
}

fn tls_config(t: &TlsFile, base: &Path) -> anyhow::Result<ServerConfig> {
    let at = |p: &Path| base.join(p);
    let cert_path = at(&t.cert_file);
    let certs = CertificateDer::pem_file_iter(&cert_path)
        .and_then(Iterator::collect::<Result<Vec<_>, _>>)
        .map_err(|e| anyhow::anyhow!("cert_file {}: {e}", cert_path.display()))?;
    if certs.is_empty() {
        bail!("cert_file {}: no certificate in it", cert_path.display());
    }
    let key_path = at(&t.key_file);
    let key = PrivateKeyDer::from_pem_file(&key_path)
        .map_err(|e| anyhow::anyhow!("key_file {}: {e}", key_path.display()))?;
    let versions: Vec<&'static rustls::SupportedProtocolVersion> = [
        (TlsVersion::TLS12, &rustls::version::TLS12),
        (TlsVersion::TLS13, &rustls::version::TLS13),
    ]
    .into_iter()
    .filter(|(v, _)| {
        t.min_version.is_none_or(|min| *v >= min) && t.max_version.is_none_or(|max| *v <= max)
    })
    .map(|(_, p)| p)
    .collect();
    if versions.is_empty() {
        bail!("min_version is above max_version");
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&versions)
        .context("TLS versions")?;
    let builder = match (t.client_auth_type, &t.client_ca_file) {
        (ClientAuth::NoClientCert, None) => builder.with_no_client_auth(),
        (ClientAuth::NoClientCert, Some(_)) => {
            bail!("client_ca_file is set but client_auth_type is NoClientCert")
        }
        (ClientAuth::RequestClientCert | ClientAuth::RequireAnyClientCert, _) => bail!(
            "client_auth_type {:?} (a client certificate nobody verifies) is not supported; use \
             VerifyClientCertIfGiven or RequireAndVerifyClientCert with client_ca_file",
            t.client_auth_type
        ),
        (_, None) => bail!(
            "client_auth_type {:?} needs client_ca_file",
            t.client_auth_type
        ),
        (auth, Some(ca)) => {
            let ca_path = at(ca);
            let mut roots = RootCertStore::empty();
            for c in CertificateDer::pem_file_iter(&ca_path)
                .map_err(|e| anyhow::anyhow!("client_ca_file {}: {e}", ca_path.display()))?
            {
                let c =
                    c.map_err(|e| anyhow::anyhow!("client_ca_file {}: {e}", ca_path.display()))?;
                roots
                    .add(c)
                    .with_context(|| format!("client_ca_file {}", ca_path.display()))?;
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider);
            let verifier = if auth == ClientAuth::VerifyClientCertIfGiven {
                verifier.allow_unauthenticated()
            } else {
                verifier
            };
            builder.with_client_cert_verifier(
                verifier
                    .build()
                    .with_context(|| format!("client_ca_file {}", ca_path.display()))?,
            )
        }
    };
    let mut config = builder
        .with_single_cert(certs, key)
        .context("cert_file and key_file do not go together")?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_and_auth_only_files_are_valid() {
        let c = WebConfig::parse("", Path::new(".")).expect("empty");
        assert!(c.tls.is_none() && !c.needs_auth());
        assert!(c.authorized(None));
        let c = WebConfig::parse(
            &format!("basic_auth_users:\n  alice: {DUMMY_HASH}\n"),
            Path::new("."),
        )
        .expect("users");
        assert!(c.needs_auth());
        assert!(!c.authorized(None));
        assert!(!c.authorized(Some(b"Basic !!!")));
        // alice:wrong
        assert!(!c.authorized(Some(b"Basic YWxpY2U6d3Jvbmc=")));
    }

    #[test]
    fn good_credentials_are_cached_and_failures_are_not() {
        // bcrypt of "s3cret" at cost 4, made by libxcrypt (Python's crypt module).
        let c = WebConfig::parse("basic_auth_users:\n  alice: '$2b$04$2vdhQ0iXc3zi9Z2Lcax.T.qZMnWIiFAWdK7GmJEHuK8DpLTtcC0Ju'\n", Path::new("."))
            .expect("users");
        let good: &[u8] = b"Basic YWxpY2U6czNjcmV0";
        let wrong: &[u8] = b"Basic YWxpY2U6d3Jvbmc=";
        assert_eq!(c.known(Some(good)), None);
        assert!(c.authorized(Some(good)));
        assert_eq!(c.known(Some(good)), Some(true));
        assert!(!c.authorized(Some(wrong)));
        assert_eq!(c.known(Some(wrong)), None, "a failure was cached");
        assert_eq!(c.known(None), Some(false));
    }

    #[test]
    fn mistakes_are_named() {
        for (text, says) in [
            ("tls_server_config:\n  cert_file: a\n", "key_file"),
            ("basic_auth_users:\n  bob: plain\n", "not a bcrypt hash"),
            ("cipher_suites: [x]\n", "cipher_suites"),
            ("tls_server_config: [\n", ""),
            (
                "tls_server_config:\n  cert_file: /nonexistent.crt\n  key_file: k\n",
                "/nonexistent.crt",
            ),
        ] {
            let e = format!(
                "{:#}",
                WebConfig::parse(text, Path::new("/")).expect_err(text)
            );
            assert!(e.contains(says), "{text:?} gave {e:?}");
        }
    }

    #[test]
    fn credentials_are_decoded() {
        assert_eq!(
            basic_credentials(b"Basic YWxpY2U6czNjcjN0OmFuZCBtb3Jl"),
            Some(("alice".into(), "s3cr3t:and more".into()))
        );
        assert_eq!(basic_credentials(b"Bearer abc"), None);
    }
}
