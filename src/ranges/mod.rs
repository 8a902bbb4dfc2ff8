//! SCAFFOLD until the ranges updater lands.
pub struct UpdateOptions {
    pub force: bool,
    pub from_file: Option<std::path::PathBuf>,
    pub version: Option<String>,
    pub verbose: bool,
}
pub fn run_update(_config: &crate::config::Config, _options: &UpdateOptions) -> u8 {
    1
}
pub fn run_check(_config: &crate::config::Config, _address: &str) -> u8 {
    1
}
