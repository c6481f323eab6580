//! Development certificates (`meshmq certs T --out DIR`). The rustls configurations built from
//! certificate files live in `transport::tls` (re-exported here).
//!
//! The development PKI is one CA (`ca.pem`, `ca.key`) and, per member of the topology, a
//! certificate `<member>.pem` with its key `<member>.key`, signed by that CA, valid for server
//! and client authentication, whose subject alternative names are `localhost` and every
//! address the member is reached at (listeners, admin, replication, advertised hosts; an
//! unspecified bind address stands for the loopback addresses). Keys are written with mode
//! 0600. Every rustls configuration is built with the ring provider explicitly, so a second
//! provider elsewhere in the build can never make a builder panic.

use std::fs;
use std::io::Write;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use crate::config::{Member, Topology};
pub use crate::transport::tls::{
    client_config, client_config_with_identity, load_server_config, TlsError,
};
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType,
};

/// How long development certificates are valid.
const VALID_DAYS: i64 = 3650;

#[derive(Debug, thiserror::Error)]
pub enum CertError {
    #[error("cannot write {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    Tls(#[from] TlsError),
    #[error("cannot generate the development certificates: {0}")]
    Generate(#[from] rcgen::Error),
}

/// Writes a development CA and a certificate per member of `topology` into `out` (created if
/// missing; existing files of the same names are replaced). Returns the files written.
pub fn generate_dev_pki(topology: &Topology, out: &Path) -> Result<Vec<PathBuf>, CertError> {
    fs::create_dir_all(out).map_err(|source| CertError::Write {
        path: out.to_path_buf(),
        source,
    })?;
    let now = time::OffsetDateTime::now_utc();
    let not_before = now - time::Duration::days(1);
    let not_after = now + time::Duration::days(VALID_DAYS);

    let ca_key = KeyPair::generate()?;
    let mut ca = CertificateParams::default();
    ca.distinguished_name = name(&format!("meshmq development CA ({})", topology.mesh));
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    ca.not_before = not_before;
    ca.not_after = not_after;
    let ca_cert = ca.self_signed(&ca_key)?;
    let issuer = Issuer::new(ca, &ca_key);

    let mut written = Vec::new();
    written.push(write_file(&out.join("ca.pem"), &ca_cert.pem(), false)?);
    written.push(write_file(
        &out.join("ca.key"),
        &ca_key.serialize_pem(),
        true,
    )?);

    for (_, member) in topology.members() {
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::default();
        params.distinguished_name = name(member.name.as_str());
        params.subject_alt_names = member_sans(member)?;
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        params.not_before = not_before;
        params.not_after = not_after;
        let cert = params.signed_by(&key, &issuer)?;
        let stem = member.name.as_str();
        written.push(write_file(
            &out.join(format!("{stem}.pem")),
            &cert.pem(),
            false,
        )?);
        written.push(write_file(
            &out.join(format!("{stem}.key")),
            &key.serialize_pem(),
            true,
        )?);
    }
    Ok(written)
}

fn name(common_name: &str) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, "meshmq");
    dn.push(DnType::CommonName, common_name);
    dn
}

/// `localhost` and every address the member can be dialed at, without repeats.
fn member_sans(member: &Member) -> Result<Vec<SanType>, CertError> {
    let mut ips: Vec<IpAddr> = Vec::new();
    let mut add_ip = |ip: IpAddr| {
        let reachable: &[IpAddr] = match ip {
            IpAddr::V4(v4) if v4.is_unspecified() => &[IpAddr::V4(Ipv4Addr::LOCALHOST)],
            IpAddr::V6(v6) if v6.is_unspecified() => &[
                IpAddr::V6(Ipv6Addr::LOCALHOST),
                IpAddr::V4(Ipv4Addr::LOCALHOST),
            ],
            _ => &[ip],
        };
        for ip in reachable {
            if !ips.contains(ip) {
                ips.push(*ip);
            }
        }
    };
    let mut dns = vec!["localhost".to_string()];
    for listener in &member.listeners {
        add_ip(listener.url.addr.ip());
        if let Some(advertise) = &listener.advertise {
            match advertise.target.host.parse::<IpAddr>() {
                Ok(ip) => add_ip(ip),
                Err(_) if !dns.contains(&advertise.target.host) => {
                    dns.push(advertise.target.host.clone())
                }
                Err(_) => {}
            }
        }
    }
    add_ip(member.admin.ip());
    if let Some(replication) = member.replication {
        add_ip(replication.ip());
    }
    let mut sans = Vec::with_capacity(dns.len() + ips.len());
    for host in dns {
        sans.push(SanType::DnsName(host.try_into()?));
    }
    sans.extend(ips.into_iter().map(SanType::IpAddress));
    Ok(sans)
}

fn write_file(path: &Path, contents: &str, secret: bool) -> Result<PathBuf, CertError> {
    let failed = |source| CertError::Write {
        path: path.to_path_buf(),
        source,
    };
    let mode = if secret { 0o600 } else { 0o644 };
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(path)
        .map_err(failed)?;
    // `mode` applies only to a new file: an older one keeps its bits unless reset.
    file.set_permissions(fs::Permissions::from_mode(mode))
        .map_err(failed)?;
    file.write_all(contents.as_bytes()).map_err(failed)?;
    Ok(path.to_path_buf())
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use rustls::pki_types::ServerName;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::{TcpListener, TcpStream};
    use tokio_rustls::{TlsAcceptor, TlsConnector};

    use super::*;
    use crate::config::TlsFiles;
    use rustls::{ClientConfig, ServerConfig};
    use std::sync::Arc;

    const TOPOLOGY: &str = r#"
[mesh]
name = "tls"

[[group]]
name = "hub"
[[group.member]]
name = "hub-1"
admin = "127.0.0.1:18161"
[[group.member.listener]]
url = "ssl://127.0.0.5:61617"
tls_cert = "certs/hub-1.pem"
tls_key = "certs/hub-1.key"
[[group.member.listener]]
url = "stomp+ssl://127.0.0.6:61618"
tls_cert = "certs/hub-1.pem"
tls_key = "certs/hub-1.key"
tls_client_ca = "certs/ca.pem"

[[group]]
name = "edge"
[[group.member]]
name = "edge-1"
admin = "0.0.0.0:18162"
[[group.member.listener]]
url = "tcp://0.0.0.0:61626"
"#;

    struct Pki {
        _dir: tempfile::TempDir,
        topology: Topology,
        certs: PathBuf,
    }

    fn pki() -> Pki {
        let dir = tempfile::tempdir().unwrap();
        let topology = crate::config::parse_str(TOPOLOGY, &dir.path().join("mesh.toml")).unwrap();
        let certs = dir.path().join("certs");
        generate_dev_pki(&topology, &certs).unwrap();
        Pki {
            _dir: dir,
            topology,
            certs,
        }
    }

    fn listener_tls(topology: &Topology, index: usize) -> TlsFiles {
        let (_, member) = topology.member("hub-1").unwrap();
        member.listeners[index].tls.clone().unwrap()
    }

    /// Runs one TLS session over 127.0.0.1: the client writes "ping", the server echoes it.
    async fn echo(server: ServerConfig, client: ClientConfig, name: &str) -> Result<(), String> {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let acceptor = TlsAcceptor::from(Arc::new(server));
        let server = tokio::spawn(async move {
            let (tcp, _) = listener.accept().await?;
            let mut tls = acceptor.accept(tcp).await?;
            let mut buf = [0u8; 4];
            tls.read_exact(&mut buf).await?;
            tls.write_all(&buf).await?;
            tls.shutdown().await
        });
        let name = ServerName::try_from(name.to_string()).unwrap();
        let result = async {
            let tcp = TcpStream::connect(addr).await?;
            let mut tls = TlsConnector::from(Arc::new(client))
                .connect(name, tcp)
                .await?;
            tls.write_all(b"ping").await?;
            let mut buf = [0u8; 4];
            tls.read_exact(&mut buf).await?;
            assert_eq!(&buf, b"ping");
            Ok::<_, std::io::Error>(())
        }
        .await;
        // The server side fails too when the client gives up; only the client's view matters.
        let _ = server.await;
        result.map_err(|e| e.to_string())
    }

    #[test]
    fn writes_a_ca_and_a_certificate_per_member_with_private_keys() {
        let pki = pki();
        let mut names: Vec<String> = fs::read_dir(&pki.certs)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        assert_eq!(
            names,
            [
                "ca.key",
                "ca.pem",
                "edge-1.key",
                "edge-1.pem",
                "hub-1.key",
                "hub-1.pem"
            ]
        );
        for name in names {
            let mode = fs::metadata(pki.certs.join(&name))
                .unwrap()
                .permissions()
                .mode()
                & 0o777;
            let expected = if name.ends_with(".key") { 0o600 } else { 0o644 };
            assert_eq!(mode, expected, "{name}");
        }
        // Regenerating replaces the files and keeps keys private.
        fs::set_permissions(pki.certs.join("ca.key"), fs::Permissions::from_mode(0o644)).unwrap();
        let written = generate_dev_pki(&pki.topology, &pki.certs).unwrap();
        assert_eq!(written.len(), 6);
        let mode = fs::metadata(pki.certs.join("ca.key"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }

    #[tokio::test]
    async fn a_client_trusting_the_ca_completes_a_handshake() {
        let pki = pki();
        let server = load_server_config(&listener_tls(&pki.topology, 0)).unwrap();
        let client = client_config(&pki.certs.join("ca.pem")).unwrap();
        echo(server, client, "127.0.0.5").await.unwrap();
    }

    #[tokio::test]
    async fn certificates_name_every_address_of_their_member() {
        let pki = pki();
        let hub = load_server_config(&listener_tls(&pki.topology, 0)).unwrap();
        let edge = load_server_config(&TlsFiles {
            cert: pki.certs.join("edge-1.pem"),
            key: pki.certs.join("edge-1.key"),
            client_ca: None,
        })
        .unwrap();
        let client = || client_config(&pki.certs.join("ca.pem")).unwrap();
        // Listener, admin, localhost; an unspecified bind address stands for loopback.
        for name in ["127.0.0.5", "127.0.0.6", "127.0.0.1", "localhost"] {
            echo(hub.clone(), client(), name).await.unwrap();
        }
        echo(edge, client(), "127.0.0.1").await.unwrap();
        let err = echo(hub, client(), "127.0.0.9").await.unwrap_err();
        assert!(err.contains("not valid for name"), "{err}");
    }

    #[tokio::test]
    async fn a_client_without_the_ca_fails_the_handshake() {
        let pki = pki();
        let other = self::pki();
        let server = load_server_config(&listener_tls(&pki.topology, 0)).unwrap();
        let stranger = client_config(&other.certs.join("ca.pem")).unwrap();
        let err = echo(server, stranger, "127.0.0.5").await.unwrap_err();
        // Both CAs carry the same name: the signature is what gives the stranger away.
        assert!(err.starts_with("invalid peer certificate"), "{err}");
    }

    #[tokio::test]
    async fn a_client_ca_listener_requires_a_client_certificate() {
        let pki = pki();
        let server = load_server_config(&listener_tls(&pki.topology, 1)).unwrap();
        let ca = pki.certs.join("ca.pem");
        let anonymous = client_config(&ca).unwrap();
        assert!(echo(server.clone(), anonymous, "127.0.0.6").await.is_err());
        let member = client_config_with_identity(
            &ca,
            &pki.certs.join("edge-1.pem"),
            &pki.certs.join("edge-1.key"),
        )
        .unwrap();
        echo(server, member, "127.0.0.6").await.unwrap();
    }

    #[test]
    fn bad_files_are_named_with_the_fix() {
        let pki = pki();
        let missing = TlsFiles {
            cert: pki.certs.join("nope.pem"),
            key: pki.certs.join("hub-1.key"),
            client_ca: None,
        };
        let err = load_server_config(&missing).unwrap_err().to_string();
        assert!(
            err.contains("nope.pem") && err.contains("meshmq certs"),
            "{err}"
        );

        let mismatched = TlsFiles {
            cert: pki.certs.join("hub-1.pem"),
            key: pki.certs.join("edge-1.key"),
            client_ca: None,
        };
        let err = load_server_config(&mismatched).unwrap_err().to_string();
        assert!(
            err.contains("edge-1.key") && err.contains("does not fit certificate"),
            "{err}"
        );

        let swapped = TlsFiles {
            cert: pki.certs.join("hub-1.key"),
            key: pki.certs.join("hub-1.key"),
            client_ca: None,
        };
        let err = load_server_config(&swapped).unwrap_err().to_string();
        assert!(err.contains("no usable PEM CERTIFICATE"), "{err}");
    }
}
