//! The booking side of the demo: the web application and the Outlook add-in calling the worker's
//! REST API (`/api/v1/...`) with its bearer token, as they do in production.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context;
use serde_json::{json, Value};
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

pub struct Api {
    base: String,
    token: String,
    http: reqwest::Client,
}

impl Api {
    pub fn new(worker: SocketAddr, token: &str) -> anyhow::Result<Api> {
        let http = reqwest::Client::builder()
            // Loopback only: an HTTP_PROXY in the environment must not carry the demo elsewhere.
            .no_proxy()
            .timeout(Duration::from_secs(10))
            .build()
            .context("building the API client")?;
        Ok(Api {
            base: format!("http://{worker}"),
            token: token.to_string(),
            http,
        })
    }

    async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: &Value,
    ) -> anyhow::Result<(u16, Value)> {
        let answer = self
            .http
            .request(method.clone(), format!("{}{path}", self.base))
            .bearer_auth(&self.token)
            .json(body)
            .send()
            .await
            .with_context(|| format!("{method} {path}"))?;
        let status = answer.status().as_u16();
        let json = answer
            .json::<Value>()
            .await
            .with_context(|| format!("{method} {path}: reading the answer"))?;
        Ok((status, json))
    }

    async fn expect(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Value,
        statuses: &[u16],
    ) -> anyhow::Result<Value> {
        let (status, answer) = self.call(method.clone(), path, &body).await?;
        anyhow::ensure!(
            statuses.contains(&status),
            "{method} {path}: answered {status}: {answer}"
        );
        Ok(answer)
    }

    /// Switches sync on for a mailbox (created when new): the worker subscribes it.
    pub async fn sync_on(&self, mailbox: &str) -> anyhow::Result<()> {
        self.expect(
            reqwest::Method::PUT,
            &format!("/api/v1/mailboxes/{mailbox}"),
            json!({"sync": true, "tenant": "Default"}),
            &[200, 201],
        )
        .await
        .map(drop)
    }

    /// Books `mailbox` from `start` to `end`; returns the reservation id.
    pub async fn book(
        &self,
        mailbox: &str,
        source: &str,
        subject: &str,
        start: OffsetDateTime,
        end: OffsetDateTime,
    ) -> anyhow::Result<String> {
        let answer = self
            .expect(
                reqwest::Method::POST,
                "/api/v1/reservations",
                json!({
                    "mailbox": mailbox,
                    "resource": resource_of(mailbox),
                    "subject": subject,
                    "start": rfc3339(start)?,
                    "end": rfc3339(end)?,
                    "source": source,
                }),
                &[201],
            )
            .await?;
        answer["id"]
            .as_str()
            .map(str::to_string)
            .with_context(|| format!("a reservation without an id: {answer}"))
    }

    /// Changes subject and times of a reservation.
    pub async fn change(
        &self,
        id: &str,
        source: &str,
        subject: &str,
        start: OffsetDateTime,
        end: OffsetDateTime,
    ) -> anyhow::Result<()> {
        self.expect(
            reqwest::Method::PATCH,
            &format!("/api/v1/reservations/{id}"),
            json!({
                "subject": subject,
                "start": rfc3339(start)?,
                "end": rfc3339(end)?,
                "source": source,
            }),
            &[200],
        )
        .await
        .map(drop)
    }

    pub async fn cancel(&self, id: &str, source: &str) -> anyhow::Result<()> {
        self.expect(
            reqwest::Method::POST,
            &format!("/api/v1/reservations/{id}/cancel"),
            json!({ "source": source }),
            &[200],
        )
        .await
        .map(drop)
    }
}

/// The room's display name, written as the item's Location: `room03@contoso.com` → `Room 03`.
pub fn resource_of(mailbox: &str) -> String {
    let local = mailbox.split('@').next().unwrap_or(mailbox);
    match local.strip_prefix("room") {
        Some(number) => format!("Room {number}"),
        None => local.to_string(),
    }
}

fn rfc3339(at: OffsetDateTime) -> anyhow::Result<String> {
    at.format(&Rfc3339).context("formatting a time")
}
