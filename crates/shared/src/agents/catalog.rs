//! The catalog of agents and teams: the ones Switchyard ships (`shipped.toml`), with a
//! deployment's own `[agents.<name>]` and `[teams.<name>]` added, or replacing a shipped one
//! of the same name. Checked as a whole: every profile, and every team member exists.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::profile::{AgentProfile, FieldError, MAX_NAME_LEN, check_token};

/// The agents and teams Switchyard ships.
const SHIPPED: &str = include_str!("shipped.toml");
/// The route every shipped agent calls. A deployment without a route of this name has its
/// shipped agents call its first route instead (see [`Catalog::shipped_for`]).
const SHIPPED_ROUTE: &str = "agents";

/// How much each part of an agent's routing score counts (`[agent_routing]`): how well
/// its capabilities match the step, how free it is, and its record.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Weights {
    pub capability: f64,
    pub load: f64,
    pub performance: f64,
}

impl Default for Weights {
    /// Fit first, then a free agent, then a good record: a specialist that is busy still
    /// beats an idle generalist unless its queue is long.
    fn default() -> Self {
        Self {
            capability: 0.5,
            load: 0.3,
            performance: 0.2,
        }
    }
}

/// Largest routing weight: only their ratios matter, so this only keeps sums finite.
const MAX_WEIGHT: f64 = 1000.0;

impl Weights {
    /// Every problem, with fields named `agent_routing.<part>`.
    pub fn problems(&self) -> Vec<FieldError> {
        let mut errors = Vec::new();
        for (part, weight) in [
            ("capability", self.capability),
            ("load", self.load),
            ("performance", self.performance),
        ] {
            if !(0.0..=MAX_WEIGHT).contains(&weight) {
                errors.push(FieldError::new(
                    format!("agent_routing.{part}"),
                    format!("must be a number from 0 to {MAX_WEIGHT}"),
                ));
            }
        }
        if errors.is_empty() && self.capability + self.load + self.performance <= 0.0 {
            errors.push(FieldError::new(
                "agent_routing",
                "at least one weight must be above 0",
            ));
        }
        errors
    }
}

/// A named list of agents.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Team {
    #[serde(default)]
    pub description: String,
    pub agents: Vec<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Catalog {
    #[serde(default)]
    pub agents: BTreeMap<String, AgentProfile>,
    #[serde(default)]
    pub teams: BTreeMap<String, Team>,
}

impl Catalog {
    /// The shipped catalog.
    pub fn shipped() -> Result<Self, String> {
        let mut catalog: Catalog =
            toml::from_str(SHIPPED).map_err(|e| format!("shipped.toml: {e}"))?;
        catalog.name_agents();
        Ok(catalog)
    }

    /// The shipped catalog for a deployment whose routes are `routes`: its agents call
    /// `SHIPPED_ROUTE` ("agents") if there is such a route, else the first one, so the shipped team
    /// works with any configuration that has a route at all.
    pub fn shipped_for<'a>(
        routes: impl IntoIterator<Item = &'a str> + Clone,
    ) -> Result<Self, String> {
        let mut catalog = Self::shipped()?;
        if !routes.clone().into_iter().any(|r| r == SHIPPED_ROUTE)
            && let Some(first) = routes.into_iter().next()
        {
            for agent in catalog.agents.values_mut() {
                first.clone_into(&mut agent.route);
            }
        }
        Ok(catalog)
    }

    /// Adds `other`'s agents and teams, replacing those of the same name.
    pub fn extend(&mut self, mut other: Catalog) {
        other.name_agents();
        self.agents.append(&mut other.agents);
        self.teams.append(&mut other.teams);
    }

    /// An agent's name is its key.
    fn name_agents(&mut self) {
        for (name, agent) in &mut self.agents {
            agent.name.clone_from(name);
        }
    }

    /// Every problem, with fields named `agents.<name>.<field>` and `teams.<name>.…`.
    /// `mcp_servers` says whether an MCP server is configured.
    pub fn problems(
        &self,
        known_route: impl Fn(&str) -> bool,
        mcp_servers: &dyn Fn(&str) -> bool,
    ) -> Vec<FieldError> {
        let mut errors = Vec::new();
        for (name, agent) in &self.agents {
            for e in agent.problems(&known_route, mcp_servers) {
                errors.push(FieldError::new(
                    format!("agents.{name}.{}", e.field),
                    e.problem,
                ));
            }
        }
        for (name, team) in &self.teams {
            check_token(&format!("teams.{name}"), name, MAX_NAME_LEN, &mut errors);
            if team.agents.is_empty() {
                errors.push(FieldError::new(
                    format!("teams.{name}.agents"),
                    "must name at least one agent",
                ));
            }
            for (i, member) in team.agents.iter().enumerate() {
                if !self.agents.contains_key(member) {
                    errors.push(FieldError::new(
                        format!("teams.{name}.agents[{i}]"),
                        format!("no agent is named `{member}`"),
                    ));
                }
            }
        }
        errors
    }

    /// Whether some agent has `capability`.
    pub fn has_capability(&self, capability: &str) -> bool {
        self.agents.values().any(|a| a.has(capability))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_shipped_catalog_is_whole_and_valid() {
        let catalog = Catalog::shipped().unwrap();
        assert!(
            catalog.problems(|r| r == "agents", &|_| false).is_empty(),
            "{:?}",
            catalog.problems(|r| r == "agents", &|_| false)
        );
        for team in ["default", "research", "software", "decision"] {
            assert!(catalog.teams.contains_key(team), "{team}");
        }
        assert_eq!(
            catalog.teams["default"].agents,
            ["planner", "researcher", "writer", "coder", "reviewer"]
        );
        for capability in [
            "task_decomposition",
            "research",
            "analysis",
            "writing",
            "code",
            "testing",
            "review",
            "critique",
            "advice",
        ] {
            assert!(catalog.has_capability(capability), "{capability}");
        }
        assert_eq!(catalog.agents["planner"].name, "planner");
        // The coder and the tester run code; the analyst calculates and reads quotes; the
        // researcher searches and reads the web.
        for (agent, tools) in [
            ("coder", &["run_code"][..]),
            ("tester", &["run_code"]),
            ("analyst", &["calculator", "stock_quote"]),
            ("researcher", &["web_search", "http_fetch"]),
        ] {
            assert_eq!(catalog.agents[agent].tools, tools, "{agent}");
        }
        // Real briefs, not placeholders.
        assert!(catalog.agents.values().all(|a| a.system_prompt.len() > 300));
    }

    #[test]
    fn a_deployment_adds_and_overrides_and_bad_teams_are_named() {
        let mut catalog = Catalog::shipped().unwrap();
        let own: Catalog = toml::from_str(
            r#"
            [agents.writer]
            role = "Copywriter"
            capabilities = ["writing"]
            route = "agents"
            system_prompt = "Write punchy copy."
            [teams.marketing]
            agents = ["writer", "ghost"]
            "#,
        )
        .unwrap();
        catalog.extend(own);
        assert_eq!(catalog.agents["writer"].role, "Copywriter");
        let fields: Vec<String> = catalog
            .problems(|_| true, &|_| false)
            .into_iter()
            .map(|e| e.field)
            .collect();
        assert_eq!(fields, ["teams.marketing.agents[1]"]);
    }
}
