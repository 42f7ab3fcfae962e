//! Tool quotas shared by every worker (`[tools.quotas.<tool>]`): each call takes one unit
//! from each quota that applies to it — the tool's `calls` (everyone together) and its
//! `per_agent` (the calling step's agent) — in fixed windows aligned to the Unix epoch, so
//! every replica agrees on when one resets. The counts live in the `tool_quotas` bucket and
//! are taken by compare-and-set, so N workers never let N× the quota through. A quota that
//! cannot be read or written refuses the call (`unavailable`): a quota that holds only
//! while the bucket answers is not one.

use std::collections::BTreeMap;
use std::time::{Duration, UNIX_EPOCH};

use async_nats::jetstream::kv;
use shared::config::ToolQuota;
use shared::task::now_ms;
use shared::tools::{ToolError, ToolErrorClass};

/// Compare-and-set attempts on one count: calls racing on one key settle within a few.
const CAS_ATTEMPTS: usize = 64;

/// The quotas in force and where their counts are kept.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Quotas<'a> {
    pub store: &'a kv::Store,
    pub config: &'a BTreeMap<String, ToolQuota>,
}

/// One quota a call is counted against.
#[derive(Debug, PartialEq, Eq)]
struct Count {
    key: String,
    limit: u64,
    /// Says whose quota it is, in the error.
    scope: String,
}

impl Quotas<'_> {
    /// Takes one call of `tool` by `agent` (`None`: a direct chat request) from every quota
    /// that applies, or says which one is used up and when it resets. The quotas are taken
    /// in turn (the agent's first), so a call refused by the tool's overall quota has used
    /// one unit of its agent's.
    pub(crate) async fn take(&self, tool: &str, agent: Option<&str>) -> Result<(), ToolError> {
        let Some(quota) = self.config.get(tool) else {
            return Ok(());
        };
        let now = now_ms();
        let (counts, resets_ms) = counts(tool, agent, quota, now);
        for count in counts {
            self.take_one(&count, tool, quota, resets_ms, now).await?;
        }
        Ok(())
    }

    async fn take_one(
        &self,
        count: &Count,
        tool: &str,
        quota: &ToolQuota,
        resets_ms: u64,
        now: u64,
    ) -> Result<(), ToolError> {
        let unavailable = |what: &str| {
            ToolError::new(
                ToolErrorClass::Unavailable,
                format!("the quota of {tool} could not be checked ({what}); try again shortly"),
            )
        };
        for _ in 0..CAS_ATTEMPTS {
            let entry = self
                .store
                .entry(&count.key)
                .await
                .map_err(|_| unavailable("reading its count"))?;
            let used = entry
                .as_ref()
                .and_then(|e| std::str::from_utf8(&e.value).ok()?.parse::<u64>().ok())
                .unwrap_or(0);
            if used >= count.limit {
                return Err(exhausted(tool, quota, count, resets_ms, now));
            }
            let next = (used + 1).to_string();
            let written = match &entry {
                Some(e) => self
                    .store
                    .update(&count.key, next.into(), e.revision)
                    .await
                    .map_err(|e| e.kind() == kv::UpdateErrorKind::WrongLastRevision),
                None => self
                    .store
                    .create(&count.key, next.into())
                    .await
                    .map_err(|e| e.kind() == kv::CreateErrorKind::AlreadyExists),
            };
            match written {
                Ok(_) => return Ok(()),
                // Another call took one first: read again.
                Err(true) => {}
                Err(false) => return Err(unavailable("writing its count")),
            }
        }
        Err(unavailable("too many calls at once"))
    }
}

/// The quotas a call of `tool` by `agent` at `now_ms` counts against (the agent's first),
/// and when their window ends.
fn counts(tool: &str, agent: Option<&str>, quota: &ToolQuota, now_ms: u64) -> (Vec<Count>, u64) {
    let window_ms = quota.window_secs.saturating_mul(1000).max(1);
    let index = now_ms / window_ms;
    let resets_ms = index.saturating_add(1).saturating_mul(window_ms);
    let mut counts = Vec::new();
    if let (Some(limit), Some(agent)) = (quota.per_agent, agent) {
        counts.push(Count {
            key: format!("{tool}.agent.{agent}.{index}"),
            limit,
            scope: format!("agent {agent}"),
        });
    }
    if let Some(limit) = quota.calls {
        counts.push(Count {
            key: format!("{tool}.all.{index}"),
            limit,
            scope: "all callers together".to_owned(),
        });
    }
    (counts, resets_ms)
}

fn exhausted(tool: &str, quota: &ToolQuota, count: &Count, resets_ms: u64, now: u64) -> ToolError {
    let at = httpdate::fmt_http_date(UNIX_EPOCH + Duration::from_millis(resets_ms));
    let secs = resets_ms.saturating_sub(now).div_ceil(1000);
    ToolError::new(
        ToolErrorClass::QuotaExceeded,
        format!(
            "the quota of {} {tool} calls per {} s for {} is used up; it resets at {at} (in {secs} s)",
            count.limit, quota.window_secs, count.scope
        ),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn windows_are_aligned_and_the_agent_is_counted_first() {
        let quota = ToolQuota {
            window_secs: 60,
            calls: Some(10),
            per_agent: Some(2),
        };
        let (agents, resets) = counts("calculator", Some("analyst"), &quota, 125_000);
        assert_eq!(resets, 180_000);
        let keys: Vec<&str> = agents.iter().map(|c| c.key.as_str()).collect();
        assert_eq!(keys, ["calculator.agent.analyst.2", "calculator.all.2"]);
        // A direct chat request counts only against `calls`.
        let (chat, _) = counts("calculator", None, &quota, 125_000);
        assert_eq!(chat.len(), 1);
        assert_eq!(chat[0].limit, 10);
    }

    #[test]
    fn the_error_says_whose_quota_and_when_it_resets() {
        let quota = ToolQuota {
            window_secs: 60,
            calls: Some(3),
            per_agent: None,
        };
        let (chat, resets) = counts("calculator", None, &quota, 125_000);
        let e = exhausted("calculator", &quota, &chat[0], resets, 125_000);
        assert_eq!(e.class, ToolErrorClass::QuotaExceeded);
        assert!(
            e.message.contains("3 calculator calls per 60 s"),
            "{}",
            e.message
        );
        assert!(
            e.message.contains("01 Jan 1970 00:03:00 GMT (in 55 s)"),
            "{}",
            e.message
        );
    }
}
