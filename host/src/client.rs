//! Flags of the commands that talk to other systems: how they trust hosts (`deploy`, `fleet`,
//! `probe`) and how they reach registries.

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
        let (ca_file, client_cert, client_key) =
            (self.ca_file.clone(), self.client_cert.clone(), self.client_key.clone());
        edgeinfer_fleet::client::ClientTls { ca_file, client_cert, client_key }.client(timeout)
    }
}

/// How to reach a registry (for `registry push`, `registry pull` and `up -f REF`).
#[derive(clap::Args, Clone)]
pub struct RegistryArgs {
    /// Talk plain HTTP to the registry (a local one), as Spin's `--insecure`.
    #[arg(short = 'k', long, env = "EDGEINFER_REGISTRY_INSECURE")]
    pub insecure: bool,
    /// Extra CA certificates (PEM) to trust for the registry's HTTPS.
    #[arg(long, env = "EDGEINFER_REGISTRY_CA_FILE")]
    registry_ca_file: Option<PathBuf>,
    /// User name for the registry (with --registry-password); default: the Docker config's
    /// credentials for the registry, else anonymous.
    #[arg(long, env = "EDGEINFER_REGISTRY_USERNAME", requires = "registry_password")]
    registry_username: Option<String>,
    #[arg(long, env = "EDGEINFER_REGISTRY_PASSWORD", hide_env_values = true, requires = "registry_username")]
    registry_password: Option<String>,
    /// A bearer token for the registry, sent as it is.
    #[arg(
        long,
        env = "EDGEINFER_REGISTRY_TOKEN",
        hide_env_values = true,
        conflicts_with = "registry_username"
    )]
    registry_token: Option<String>,
}

impl RegistryArgs {
    /// The connection these flags describe: for `reference`'s registry alone when given, else for
    /// every registry (`oci://` sources of the user's own runtime config).
    pub fn connection(&self, reference: Option<&str>) -> anyhow::Result<edgeinfer_registry::Connection> {
        let connection = edgeinfer_registry::Connection::new(
            self.insecure,
            self.registry_ca_file.clone(),
            self.registry_username.clone().zip(self.registry_password.clone()),
            self.registry_token.clone(),
        );
        match reference {
            Some(reference) => Ok(connection.scoped_to(reference)?),
            None => Ok(connection),
        }
    }
}
