//! An agent profile: who an agent is (role, capabilities, system prompt), which route it
//! calls, which tools it may use, and how many of its steps may run at once across all
//! workers. Checked field by field, so a bad profile is refused with the field named.

use std::str::FromStr;

use crate::Capability;
use serde::{Deserialize, Serialize};

/// Longest agent name: its queue, `agent-<name>`, must stay a subject token (64 characters).
pub const MAX_NAME_LEN: usize = 48;
/// Longest role or description: a line or a paragraph, not a document.
pub const MAX_TEXT_LEN: usize = 1024;
/// Longest system prompt: room for a detailed brief, far below any context window.
pub const MAX_PROMPT_LEN: usize = 32 * 1024;
/// Most capabilities or tools one profile may list.
pub const MAX_LIST_LEN: usize = 32;
/// Largest `max_concurrency`: beyond it the cap would not protect a provider anyway.
pub const MAX_CONCURRENCY: u32 = 1024;
/// Steps of one agent that may run at once when its profile does not say.
pub const DEFAULT_CONCURRENCY: u32 = 4;
/// Prefix of an agent's queue capability: its steps go to `tasks.agent-<name>.<priority>`.
pub const QUEUE_PREFIX: &str = "agent-";

/// One agent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentProfile {
    /// Subject-safe token: lowercase letters, digits, `-`, `_`. In configuration and in
    /// `PUT /v1/agents/{name}` it comes from the key or the path.
    #[serde(default)]
    pub name: String,
    /// What it is, in a few words ("Researcher").
    pub role: String,
    /// What steps it can take (`research`, `writing`, `review`, …), as tokens.
    pub capabilities: Vec<String>,
    /// The route (model alias) it calls.
    pub route: String,
    pub system_prompt: String,
    /// Tools it may use, by name.
    #[serde(default)]
    pub tools: Vec<String>,
    /// Its steps in flight at once, across every worker.
    #[serde(default = "default_concurrency")]
    pub max_concurrency: u32,
    #[serde(default)]
    pub description: String,
}

fn default_concurrency() -> u32 {
    DEFAULT_CONCURRENCY
}

/// A problem with one field of a request or profile.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FieldError {
    /// The field's path, e.g. `capabilities[2]`.
    pub field: String,
    pub problem: String,
}

impl FieldError {
    pub fn new(field: impl Into<String>, problem: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            problem: problem.into(),
        }
    }
}

impl std::fmt::Display for FieldError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.field, self.problem)
    }
}

/// Checks that `value` is a subject-safe token of at most `max` characters.
pub fn check_token(field: &str, value: &str, max: usize, errors: &mut Vec<FieldError>) {
    if value.len() > max {
        errors.push(FieldError::new(
            field,
            format!("must be at most {max} characters"),
        ));
    } else if let Err(e) = Capability::from_str(value) {
        errors.push(FieldError::new(field, e.to_string()));
    }
}

fn check_text(field: &str, value: &str, max: usize, required: bool, errors: &mut Vec<FieldError>) {
    if required && value.trim().is_empty() {
        errors.push(FieldError::new(field, "must not be empty"));
    } else if value.len() > max {
        errors.push(FieldError::new(
            field,
            format!("must be at most {max} bytes"),
        ));
    }
}

impl AgentProfile {
    /// Every problem with this profile; `known_route` says whether a route is configured,
    /// `mcp_servers` whether an MCP server is (its tools may be listed as `mcp.<server>.<tool>`).
    pub fn problems(
        &self,
        known_route: impl Fn(&str) -> bool,
        mcp_servers: &dyn Fn(&str) -> bool,
    ) -> Vec<FieldError> {
        let mut errors = Vec::new();
        check_token("name", &self.name, MAX_NAME_LEN, &mut errors);
        check_text("role", &self.role, MAX_TEXT_LEN, true, &mut errors);
        check_text(
            "description",
            &self.description,
            MAX_TEXT_LEN,
            false,
            &mut errors,
        );
        check_text(
            "system_prompt",
            &self.system_prompt,
            MAX_PROMPT_LEN,
            true,
            &mut errors,
        );
        if self.capabilities.is_empty() {
            errors.push(FieldError::new(
                "capabilities",
                "must name at least one capability",
            ));
        }
        for (list, field) in [(&self.capabilities, "capabilities"), (&self.tools, "tools")] {
            if list.len() > MAX_LIST_LEN {
                errors.push(FieldError::new(
                    field,
                    format!("must have at most {MAX_LIST_LEN} entries"),
                ));
            }
            for (i, item) in list.iter().enumerate() {
                if field == "tools" && crate::mcp::is_mcp_name(item) {
                    // Checked below, against the configured MCP servers.
                    continue;
                }
                check_token(
                    &format!("{field}[{i}]"),
                    item,
                    crate::names::MAX_TOKEN_LEN,
                    &mut errors,
                );
            }
        }
        // Deny by default: a tool nobody serves is a typo, refused rather than never offered.
        for (i, tool) in self.tools.iter().enumerate() {
            if crate::mcp::is_mcp_name(tool) {
                if let Some(problem) = crate::mcp::name_problem(tool, mcp_servers) {
                    errors.push(FieldError::new(format!("tools[{i}]"), problem));
                }
            } else if crate::Capability::from_str(tool).is_ok() && !crate::tools::is_builtin(tool) {
                errors.push(FieldError::new(
                    format!("tools[{i}]"),
                    format!(
                        "`{tool}` is not a built-in tool ({})",
                        crate::config::known_tools()
                    ),
                ));
            }
        }
        if self.route.is_empty() {
            errors.push(FieldError::new("route", "must name a route"));
        } else if !known_route(&self.route) {
            errors.push(FieldError::new(
                "route",
                format!("`{}` is not a configured route", self.route),
            ));
        }
        if !(1..=MAX_CONCURRENCY).contains(&self.max_concurrency) {
            errors.push(FieldError::new(
                "max_concurrency",
                format!("must be from 1 to {MAX_CONCURRENCY}"),
            ));
        }
        errors
    }

    /// Whether it can take steps needing `capability`.
    pub fn has(&self, capability: &str) -> bool {
        self.capabilities.iter().any(|c| c == capability)
    }

    /// The queue its steps go to: capability `agent-<name>`.
    pub fn queue(&self) -> Result<Capability, crate::NameError> {
        queue_of(&self.name)
    }
}

/// The queue capability of the agent named `name`.
fn queue_of(name: &str) -> Result<Capability, crate::NameError> {
    format!("{QUEUE_PREFIX}{name}").parse()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn profile() -> AgentProfile {
        AgentProfile {
            name: "researcher".into(),
            role: "Researcher".into(),
            capabilities: vec!["research".into()],
            route: "simulated".into(),
            system_prompt: "Find facts.".into(),
            tools: vec![],
            max_concurrency: 2,
            description: String::new(),
        }
    }

    #[test]
    fn a_good_profile_has_no_problems_and_a_queue() {
        let p = profile();
        assert!(p.problems(|r| r == "simulated", &|_| false).is_empty());
        assert_eq!(p.queue().unwrap().as_str(), "agent-researcher");
        assert!(p.has("research") && !p.has("code"));
    }

    #[test]
    fn every_bad_field_is_named() {
        let p = AgentProfile {
            name: "Bad Name".into(),
            role: " ".into(),
            capabilities: vec!["ok".into(), "no.dots".into()],
            route: "ghost".into(),
            system_prompt: String::new(),
            tools: vec!["x y".into()],
            max_concurrency: 0,
            description: "d".repeat(MAX_TEXT_LEN + 1),
        };
        let fields: Vec<String> = p
            .problems(|_| false, &|_| false)
            .into_iter()
            .map(|e| e.field)
            .collect();
        assert_eq!(
            fields,
            [
                "name",
                "role",
                "description",
                "system_prompt",
                "capabilities[1]",
                "tools[0]",
                "route",
                "max_concurrency"
            ]
        );
    }

    #[test]
    fn only_built_in_tools_may_be_listed() {
        let p = AgentProfile {
            tools: vec!["calculator".into(), "shell".into()],
            ..profile()
        };
        let problems = p.problems(|_| true, &|_| false);
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert_eq!(problems[0].field, "tools[1]");
        assert!(problems[0].problem.contains("not a built-in tool"));
    }

    #[test]
    fn mcp_tools_of_configured_servers_may_be_listed() {
        let p = AgentProfile {
            tools: vec![
                "mcp.files.read_file".into(),
                "mcp.other.x".into(),
                "mcp.files".into(),
            ],
            ..profile()
        };
        let problems = p.problems(|_| true, &|s| s == "files");
        let fields: Vec<&str> = problems.iter().map(|e| e.field.as_str()).collect();
        assert_eq!(fields, ["tools[1]", "tools[2]"], "{problems:?}");
        assert!(problems[0].problem.contains("no MCP server `other`"));
    }

    #[test]
    fn unknown_fields_are_refused() {
        let err = serde_json::from_value::<AgentProfile>(serde_json::json!({
            "name": "a", "role": "r", "capabilities": ["c"], "route": "r",
            "system_prompt": "p", "colour": "blue"
        }))
        .unwrap_err();
        assert!(err.to_string().contains("colour"), "{err}");
    }

    #[test]
    fn names_leave_room_for_the_queue_prefix() {
        let long = "a".repeat(MAX_NAME_LEN);
        assert!(queue_of(&long).is_ok());
        let p = AgentProfile {
            name: "a".repeat(MAX_NAME_LEN + 1),
            ..profile()
        };
        assert_eq!(p.problems(|_| true, &|_| false)[0].field, "name");
    }
}
