//! Retries: exponential backoff with jitter, honouring `Retry-After` and the IETF `RateLimit`
//! header (docs/hub.md, "Conventions"), and the mapping from error answers to [`HubError`].

use std::time::Duration;

use reqwest::Response;
use reqwest::header::HeaderMap;

use super::error::{HubError, redact};

/// How requests are retried. The commit POST is never retried blindly (see `commit`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Attempts in total, first one included.
    pub max_attempts: u32,
    /// First backoff delay; doubles each retry.
    pub base_delay: Duration,
    /// Cap of the backoff delay (not of a server-requested wait).
    pub max_delay: Duration,
    /// Longest server-requested wait (`Retry-After`, `RateLimit`) the client sits out; a longer
    /// one is returned as [`HubError::RateLimited`] so the caller can decide.
    pub max_server_wait: Duration,
}

impl Default for RetryPolicy {
    /// Like the Python client: 5 retries, 1 s doubling to 8 s.
    fn default() -> Self {
        Self {
            max_attempts: 6,
            base_delay: Duration::from_secs(1),
            max_delay: Duration::from_secs(8),
            max_server_wait: Duration::from_secs(300),
        }
    }
}

impl RetryPolicy {
    /// The delay before retry number `retry` (0-based): the server's wait if it gave one,
    /// else `base · 2^retry` capped, with ±25 % jitter so parallel parts do not retry in lockstep.
    pub fn delay(&self, retry: u32, server_wait: Option<Duration>) -> Duration {
        if let Some(wait) = server_wait {
            return wait;
        }
        let exponential = self
            .base_delay
            .saturating_mul(1u32 << retry.min(16))
            .min(self.max_delay);
        let jitter = rand::random_range(0.75..1.25);
        exponential.mul_f64(jitter)
    }
}

/// The wait a 429/503 answer asks for: `Retry-After` in seconds, or `RateLimit: …;r=0;t=N`.
pub fn server_wait(headers: &HeaderMap) -> Option<Duration> {
    let retry_after = headers
        .get(reqwest::header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    if let Some(seconds) = retry_after {
        return Some(Duration::from_secs(seconds));
    }
    let rate_limit = headers.get("ratelimit").and_then(|v| v.to_str().ok())?;
    let mut remaining = None;
    let mut reset = None;
    for part in rate_limit.split(';') {
        let (key, value) = part.trim().split_once('=').unwrap_or((part.trim(), ""));
        match key {
            "r" => remaining = value.parse::<u64>().ok(),
            "t" => reset = value.parse::<u64>().ok(),
            _ => {}
        }
    }
    (remaining == Some(0))
        .then_some(())
        .and(reset)
        .map(Duration::from_secs)
}

/// Turns an error answer into a typed error, reading `X-Error-Code` and the message.
pub async fn error_from_response(response: Response) -> HubError {
    let url = redact(response.url().as_str());
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    let code = headers
        .get("x-error-code")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let header_message = headers
        .get("x-error-message")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let body = response.text().await.unwrap_or_default();
    let message = header_message
        .or_else(|| {
            serde_json::from_str::<serde_json::Value>(&body)
                .ok()
                .and_then(|v| v["error"].as_str().map(str::to_owned))
        })
        .unwrap_or_else(|| body.chars().take(300).collect());
    match (status, code.as_deref()) {
        (_, Some("RepoNotFound")) => HubError::RepoNotFound { url },
        (_, Some("RevisionNotFound")) => HubError::RevisionNotFound { url },
        (_, Some("EntryNotFound")) => HubError::EntryNotFound { url },
        (401, _) if message.contains("Invalid credentials") => {
            HubError::Unauthorized { url, message }
        }
        (401, _) if url.contains("/api/models/") || url.contains("/api/datasets/") => {
            HubError::RepoNotFound { url }
        }
        (401 | 403, _) => HubError::Unauthorized { url, message },
        (412, _) => HubError::ParentMismatch { url, message },
        (429, _) => HubError::RateLimited {
            url,
            retry_after: server_wait(&headers),
        },
        _ => HubError::Status {
            url,
            status,
            code,
            message,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_waits_are_read_from_both_headers() {
        let mut headers = HeaderMap::new();
        headers.insert("retry-after", "7".parse().unwrap());
        assert_eq!(server_wait(&headers), Some(Duration::from_secs(7)));
        let mut headers = HeaderMap::new();
        headers.insert("ratelimit", "\"api\";r=0;t=55".parse().unwrap());
        assert_eq!(server_wait(&headers), Some(Duration::from_secs(55)));
        headers.insert("ratelimit", "\"api\";r=3;t=55".parse().unwrap());
        assert_eq!(server_wait(&headers), None);
    }

    #[test]
    fn backoff_doubles_within_jitter_and_caps() {
        let policy = RetryPolicy::default();
        for retry in 0..6 {
            let nominal = Duration::from_secs(1 << retry).min(policy.max_delay);
            let delay = policy.delay(retry, None);
            assert!(
                delay >= nominal.mul_f64(0.75) && delay <= nominal.mul_f64(1.25),
                "{retry}: {delay:?}"
            );
        }
        assert_eq!(
            policy.delay(0, Some(Duration::from_secs(3))),
            Duration::from_secs(3)
        );
    }
}
