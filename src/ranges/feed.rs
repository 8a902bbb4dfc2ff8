//! The Microsoft 365 endpoints feed's answers, as far as the updater reads them.

use serde::Deserialize;

use super::FeedError;

/// The version method's answer: `{"instance":"Worldwide","latest":"2025043000"}`.
#[derive(Debug, Clone, Deserialize)]
struct VersionAnswer {
    instance: String,
    latest: String,
}

/// One endpoint set of the endpoints method's answer. Keys the updater does not read (`urls`,
/// `tcpPorts`, `notes`, ...) and keys Microsoft adds later are ignored.
#[derive(Debug, Clone, Deserialize)]
pub struct EndpointSet {
    pub id: u32,
    #[serde(rename = "serviceArea")]
    pub service_area: String,
    #[serde(default)]
    pub ips: Vec<String>,
    pub category: String,
    pub required: bool,
}

/// Reads the version method's answer and returns the latest version of `instance`.
pub fn parse_version_answer(body: &[u8], instance: &str) -> Result<String, FeedError> {
    let answer: VersionAnswer = serde_json::from_slice(body)
        .map_err(|e| FeedError::BadAnswer(format!("version answer: {e}")))?;
    if answer.instance != instance {
        return Err(FeedError::BadAnswer(format!(
            "version answer is for instance {:?}, asked for {instance:?}",
            answer.instance
        )));
    }
    check_version(&answer.latest)
        .map_err(|e| FeedError::BadAnswer(format!("version answer: {e}")))?;
    Ok(answer.latest)
}

/// Reads the endpoints method's answer: a JSON array of endpoint sets.
pub fn parse_endpoints(body: &[u8]) -> Result<Vec<EndpointSet>, FeedError> {
    serde_json::from_slice(body).map_err(|e| FeedError::BadAnswer(format!("endpoints answer: {e}")))
}

/// A version goes into the ranges file's header and the state directory, so it must be one short
/// token. Microsoft's are ten digits (`YYYYMMDDNN`).
pub fn check_version(version: &str) -> Result<(), String> {
    let plausible = !version.is_empty()
        && version.len() <= 32
        && version
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.');
    if plausible {
        Ok(())
    } else {
        Err(format!(
            "version {version:?} is not 1 to 32 letters, digits, dots or dashes"
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn version_answer() {
        let body = br#"{"instance":"Worldwide","latest":"2025043000"}"#;
        assert_eq!(
            parse_version_answer(body, "Worldwide").unwrap(),
            "2025043000"
        );
        assert!(parse_version_answer(body, "China").is_err());
        for bad in [
            &br#"{"instance":"Worldwide"}"#[..],
            br#"{"instance":"Worldwide","latest":""}"#,
            br#"{"instance":"Worldwide","latest":"2025\n# count: 1"}"#,
            b"<html>",
            b"",
        ] {
            let err = parse_version_answer(bad, "Worldwide").unwrap_err();
            assert!(matches!(err, FeedError::BadAnswer(_)), "{err}");
        }
    }

    #[test]
    fn endpoint_sets_tolerate_unknown_keys_and_spaces_in_ports() {
        let body = br#"[{"id":2,"serviceArea":"Exchange","ips":["40.96.0.0/13"],
            "tcpPorts":"143, 587, 993, 995","category":"Allow","required":false,
            "futureKey":{"a":[1,2]}},
            {"id":190,"serviceArea":"MEM","urls":["x"],"category":"Default","required":false}]"#;
        let sets = parse_endpoints(body).unwrap();
        assert_eq!(sets.len(), 2);
        assert_eq!(sets[0].ips, ["40.96.0.0/13"]);
        assert!(sets[1].ips.is_empty());
    }

    #[test]
    fn missing_required_field_is_named() {
        let body = br#"[{"id":1,"serviceArea":"Exchange","ips":[],"required":true}]"#;
        let err = parse_endpoints(body).unwrap_err().to_string();
        assert!(err.contains("category"), "{err}");
        assert!(parse_endpoints(br#"{"id":1}"#).is_err());
    }
}
