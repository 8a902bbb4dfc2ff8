//! PLACEHOLDER until the streaming validator lands: every body is refused.
use super::model::Notification;
use super::Limits;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Summary {
    pub response_messages: usize,
    pub events: usize,
    pub error_without_notification: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RejectionKind {
    NotWellFormed,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    pub kind: RejectionKind,
    pub detail: String,
}

impl Rejection {
    pub fn reason(&self) -> &'static str {
        "xml_not_well_formed"
    }
}

impl std::fmt::Display for Rejection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.reason(), self.detail)
    }
}

pub fn validate(_body: &[u8], _limits: &Limits) -> Result<Summary, Rejection> {
    Err(Rejection {
        kind: RejectionKind::NotWellFormed,
        detail: "validator not built yet".into(),
    })
}

pub fn parse(_body: &[u8], _limits: &Limits) -> Result<Notification, Rejection> {
    Err(Rejection {
        kind: RejectionKind::NotWellFormed,
        detail: "validator not built yet".into(),
    })
}
