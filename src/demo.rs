//! SCAFFOLD until the demo lands.
pub fn run(_keep: bool) -> anyhow::Result<()> {
    anyhow::bail!("demo not built yet")
}
