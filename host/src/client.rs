//! The TLS flags of the commands that talk to hosts (`deploy`, `fleet`, `probe`).

use std::path::PathBuf;
use std::time::Duration;

/// How this command trusts hosts and proves itself to them.
#[derive(clap::Args, Clone, Default)]
pub struct ClientTls {
    /// Extra PEM CA certificates to trust for the hosts' HTTPS (besides the system's).
    #[arg(long, env = "EDGEINFER_CA_FILE")]
    pub ca_file: Option<PathBuf>,
    /// PEM client certificate for hosts whose admin API requires one (mTLS); with --client-key.
    #[arg(long, env = "EDGEINFER_CLIENT_CERT", requires = "client_key")]
    pub client_cert: Option<PathBuf>,
    /// PEM private key of --client-cert.
    #[arg(long, env = "EDGEINFER_CLIENT_KEY", requires = "client_cert")]
    pub client_key: Option<PathBuf>,
}

impl ClientTls {
    /// A blocking client with these settings and a `timeout` per request.
    pub fn client(&self, timeout: Duration) -> anyhow::Result<reqwest::blocking::Client> {
        let tls = edgeinfer_fleet::client::ClientTls {
            ca_file: self.ca_file.clone(),
            client_cert: self.client_cert.clone(),
            client_key: self.client_key.clone(),
        };
        tls.client(timeout)
    }
}
