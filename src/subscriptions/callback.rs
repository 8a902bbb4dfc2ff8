//! The callback URL Exchange is told to post notifications to, by the product's precedence:
//! `endpoint_url` used as is, else with `use_legacy_endpoint`
//! `{root}/Webservices/SyncNotification.svc?{tenant}`, else `{root}/api/webhooks/exchange`, where
//! `{root}` is `idp_root_url`.

use crate::config::SubscriptionsConfig;

/// Exchange refuses longer URLs (ErrorInvalidPushSubscriptionUrl).
pub const MAX_URL_CHARS: usize = 2082;

/// Which rule chose the URL.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CallbackRule {
    EndpointUrl,
    Legacy,
    Default,
}

impl CallbackRule {
    /// How `pushgate config check` names the rule.
    pub fn describe(self) -> &'static str {
        match self {
            CallbackRule::EndpointUrl => {
                "rule 1: subscriptions.endpoint_url (ExchangePushNotificationEndpointUrl), used as is"
            }
            CallbackRule::Legacy => {
                "rule 2: use_legacy_endpoint (ExchangePushNotificationUseLegacyEndpoint): \
                 {idp_root_url}/Webservices/SyncNotification.svc?{tenant}"
            }
            CallbackRule::Default => "rule 3: {idp_root_url}/api/webhooks/exchange (IdpRootUrl)",
        }
    }
}

/// A configuration that yields no valid callback URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CallbackError {
    pub key: &'static str,
    pub problem: String,
}

/// The callback URL for every mailbox (rule 2 puts the mailbox's tenant in the query).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CallbackUrl {
    pub rule: CallbackRule,
    /// The URL (rules 1 and 3) or the part before the tenant (rule 2).
    base: String,
}

impl CallbackUrl {
    pub fn from_config(config: &SubscriptionsConfig) -> Result<Self, CallbackError> {
        if !config.endpoint_url.is_empty() {
            check_url("subscriptions.endpoint_url", &config.endpoint_url)?;
            return Ok(Self {
                rule: CallbackRule::EndpointUrl,
                base: config.endpoint_url.clone(),
            });
        }
        if config.idp_root_url.is_empty() {
            return Err(CallbackError {
                key: "subscriptions.idp_root_url",
                problem: "is empty and so is subscriptions.endpoint_url: Exchange would have no \
                          URL to post notifications to (set IdpRootUrl or \
                          ExchangePushNotificationEndpointUrl)"
                    .into(),
            });
        }
        let root = check_url("subscriptions.idp_root_url", &config.idp_root_url)?;
        if root.query().is_some() || root.fragment().is_some() {
            return Err(CallbackError {
                key: "subscriptions.idp_root_url",
                problem: "must be a root URL without query or fragment".into(),
            });
        }
        let root = config.idp_root_url.trim_end_matches('/');
        let (rule, base) = if config.use_legacy_endpoint {
            (
                CallbackRule::Legacy,
                format!("{root}/Webservices/SyncNotification.svc?"),
            )
        } else {
            (
                CallbackRule::Default,
                format!("{root}/api/webhooks/exchange"),
            )
        };
        let url = Self { rule, base };
        // The longest tenant name must still fit.
        let longest = url.for_tenant(&"t".repeat(crate::endpoint::MAX_TENANT_CHARS));
        if longest.chars().count() > MAX_URL_CHARS {
            return Err(CallbackError {
                key: "subscriptions.idp_root_url",
                problem: format!("makes callback URLs longer than {MAX_URL_CHARS} characters"),
            });
        }
        Ok(url)
    }

    /// The URL a subscription for a mailbox of `tenant` registers.
    pub fn for_tenant(&self, tenant: &str) -> String {
        match self.rule {
            CallbackRule::Legacy => format!("{}{tenant}", self.base),
            CallbackRule::EndpointUrl | CallbackRule::Default => self.base.clone(),
        }
    }
}

fn check_url(key: &'static str, value: &str) -> Result<url::Url, CallbackError> {
    let problem = |text: &str| CallbackError {
        key,
        problem: format!("{value:?} {text}"),
    };
    let parsed = url::Url::parse(value).map_err(|e| problem(&format!("is not a URL: {e}")))?;
    if !matches!(parsed.scheme(), "http" | "https") {
        return Err(problem("must be an http:// or https:// URL"));
    }
    if parsed.host_str().is_none_or(str::is_empty) {
        return Err(problem("names no host"));
    }
    if !parsed.username().is_empty() || parsed.password().is_some() {
        return Err(problem("must not carry credentials"));
    }
    if value.chars().count() > MAX_URL_CHARS {
        return Err(problem(&format!(
            "is longer than the {MAX_URL_CHARS} characters Exchange accepts"
        )));
    }
    Ok(parsed)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(endpoint: &str, legacy: bool, root: &str) -> SubscriptionsConfig {
        SubscriptionsConfig {
            endpoint_url: endpoint.into(),
            use_legacy_endpoint: legacy,
            idp_root_url: root.into(),
            ..SubscriptionsConfig::default()
        }
    }

    #[test]
    fn endpoint_url_wins_and_is_used_as_is() {
        let url = CallbackUrl::from_config(&config(
            "https://push.contoso.com/custom/path?x=1",
            true,
            "https://idp.contoso.com",
        ))
        .unwrap();
        assert_eq!(url.rule, CallbackRule::EndpointUrl);
        assert_eq!(
            url.for_tenant("fabrikam"),
            "https://push.contoso.com/custom/path?x=1"
        );
    }

    #[test]
    fn legacy_endpoint_names_the_tenant() {
        let url = CallbackUrl::from_config(&config("", true, "https://idp.contoso.com/")).unwrap();
        assert_eq!(url.rule, CallbackRule::Legacy);
        assert_eq!(
            url.for_tenant("Default"),
            "https://idp.contoso.com/Webservices/SyncNotification.svc?Default"
        );
    }

    #[test]
    fn default_endpoint_under_the_root() {
        let url =
            CallbackUrl::from_config(&config("", false, "https://idp.contoso.com/base")).unwrap();
        assert_eq!(url.rule, CallbackRule::Default);
        assert_eq!(
            url.for_tenant("x"),
            "https://idp.contoso.com/base/api/webhooks/exchange"
        );
    }

    #[test]
    fn combinations_without_a_valid_url_are_refused() {
        for (endpoint, root, key) in [
            ("", "", "subscriptions.idp_root_url"),
            ("ftp://push.contoso.com/x", "", "subscriptions.endpoint_url"),
            ("/relative", "", "subscriptions.endpoint_url"),
            (
                "https://user:pw@push.contoso.com/",
                "",
                "subscriptions.endpoint_url",
            ),
            ("", "not a url", "subscriptions.idp_root_url"),
            (
                "",
                "https://idp.contoso.com/?q=1",
                "subscriptions.idp_root_url",
            ),
        ] {
            let error = CallbackUrl::from_config(&config(endpoint, false, root)).unwrap_err();
            assert_eq!(error.key, key, "{endpoint:?} {root:?}");
        }
        let long = format!("https://idp.contoso.com/{}", "a".repeat(2100));
        assert!(CallbackUrl::from_config(&config("", false, &long)).is_err());
    }
}
