//! TEMPORARY stub until the epmd branch lands.
#![allow(missing_docs)]
pub mod client {
    use super::EpmdError;
    use std::net::SocketAddr;
    pub struct NodeInfo { pub port: u16 }
    pub async fn port_please(_epmd: SocketAddr, _name: &str) -> Result<Option<NodeInfo>, EpmdError> { Ok(None) }
}
#[derive(Debug, thiserror::Error)]
pub enum EpmdError { #[error("name taken {name}")] NameTaken { name: String } }
pub enum EpmdMode { Client, Embedded }
impl std::fmt::Display for EpmdMode { fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result { write!(f, "x") } }
pub struct EpmdHandle { pub creation: u32, pub mode: EpmdMode, pub epmd_port: u16 }
pub async fn start(epmd_port: u16, _name: &str, _dist_port: u16, _hidden: bool, _shutdown: tokio_util::sync::CancellationToken, _tracker: &tokio_util::task::TaskTracker) -> Result<EpmdHandle, EpmdError> { Ok(EpmdHandle { creation: 1, mode: EpmdMode::Client, epmd_port }) }
