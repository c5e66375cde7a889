//! Test certificates made with `openssl`: a CA, a server certificate for
//! 127.0.0.1/localhost and a client certificate (for mutual TLS).
//!
//! Files written to the directory: `ca.pem`, `server.pem`,
//! `server-key.pem`, `client.pem`, `client-key.pem`.

use std::process::Command;

/// Runs openssl; `None` (a skip, or a failure under CI) when it is missing.
fn openssl(dir: &std::path::Path, args: &[&str]) -> Option<()> {
    let status = Command::new("openssl").args(args).current_dir(dir).output();
    match status {
        Ok(o) if o.status.success() => Some(()),
        Ok(o) => panic!("openssl {args:?}: {}", String::from_utf8_lossy(&o.stderr)),
        Err(_) => crate::missing("openssl is not installed"),
    }
}

/// Writes a CA, a server certificate for 127.0.0.1 and a client
/// certificate into `dir`. `None` when openssl is missing outside CI.
pub fn certificates(dir: &std::path::Path) -> Option<()> {
    openssl(
        dir,
        &[
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-keyout",
            "ca-key.pem",
            "-out",
            "ca.pem",
            "-days",
            "2",
            "-subj",
            "/CN=test-ca",
        ],
    )?;
    std::fs::write(
        dir.join("server.ext"),
        "subjectAltName=IP:127.0.0.1,DNS:localhost\n",
    )
    .unwrap();
    std::fs::write(dir.join("client.ext"), "extendedKeyUsage=clientAuth\n").unwrap();
    for (name, ext) in [("server", "server.ext"), ("client", "client.ext")] {
        openssl(
            dir,
            &[
                "req",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:P-256",
                "-nodes",
                "-keyout",
                &format!("{name}-key.pem"),
                "-out",
                &format!("{name}.csr"),
                "-subj",
                &format!("/CN={name}"),
            ],
        )?;
        openssl(
            dir,
            &[
                "x509",
                "-req",
                "-in",
                &format!("{name}.csr"),
                "-CA",
                "ca.pem",
                "-CAkey",
                "ca-key.pem",
                "-CAcreateserial",
                "-out",
                &format!("{name}.pem"),
                "-days",
                "2",
                "-extfile",
                ext,
            ],
        )?;
    }
    Some(())
}
