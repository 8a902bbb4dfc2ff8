//! PLACEHOLDER until the writer lands.
use super::model::Notification;

pub fn notification_xml(_notification: &Notification) -> String {
    String::new()
}
