//! SCAFFOLD until the worker lands.
pub fn run(_config: crate::config::Config) -> anyhow::Result<()> {
    anyhow::bail!("worker not built yet")
}
