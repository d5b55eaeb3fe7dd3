//! The Hub client and the embedded server, against each other and against peers nobody here
//! wrote (the official Python client, the `hf-hub` crate).

mod python;

use hubsweep::hub::server::{Server, ServerConfig, ServerHandle};

/// Starts an embedded server on loopback over a store in `dir`.
pub async fn start_server(
    dir: &std::path::Path,
    configure: impl FnOnce(&mut ServerConfig),
) -> ServerHandle {
    let mut config = ServerConfig::new(dir.join("store"));
    configure(&mut config);
    Server::start(config).await.expect("start the embedded hub")
}

/// The venv Python with `huggingface_hub==2.4.0` (scripts/test.d/10-python-hub.sh), or `None`
/// after a skip note when peers are optional.
pub fn hub_python() -> Option<std::path::PathBuf> {
    match std::env::var_os("HUBSWEEP_HUB_PYTHON") {
        Some(path) => Some(path.into()),
        None if crate::common::peers_required() => {
            panic!(
                "HUBSWEEP_HUB_PYTHON is not set: source scripts/test.d/10-python-hub.sh (scripts/test.sh does)"
            )
        }
        None => {
            eprintln!(
                "skip: HUBSWEEP_HUB_PYTHON not set (run scripts/test.sh to install the Python peer)"
            );
            None
        }
    }
}
