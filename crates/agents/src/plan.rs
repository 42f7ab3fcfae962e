//! A plan: the DAG of steps a goal is decomposed into, `{id, capability, instruction,
//! depends_on}` each, whether a caller gave it or the planner agent wrote it. Checked before
//! anything runs: ids unique and subject-safe, capabilities known, dependencies present,
//! acyclic, and within the loop guards (step count, depth, fan-out, no repeated step).

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use shared::agents::{FieldError, check_token};

/// Longest step id (a token, part of the step's task id name).
pub const MAX_STEP_ID_LEN: usize = 32;
/// Longest step instruction: a brief, not a document (documents go in context).
pub const MAX_INSTRUCTION_LEN: usize = 8 * 1024;

/// Loop guards on a plan's shape.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PlanLimits {
    /// Most steps in one plan.
    pub max_steps: usize,
    /// Longest chain of dependent steps.
    pub max_depth: usize,
    /// Most steps that may start from one point: roots, or dependents of one step.
    pub max_fan_out: usize,
}

impl Default for PlanLimits {
    /// Room for a real decomposition (a dozen steps, a few levels deep), not for a runaway
    /// planner: every step costs a model call.
    fn default() -> Self {
        Self {
            max_steps: 12,
            max_depth: 6,
            max_fan_out: 6,
        }
    }
}

/// One step of a plan.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PlanStep {
    pub id: String,
    /// What the step needs (`research`, `writing`, …); routing picks an agent that has it.
    pub capability: String,
    pub instruction: String,
    #[serde(default)]
    pub depends_on: Vec<String>,
    /// An agent to run it, if the plan names one (routing is skipped).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent: Option<String>,
    /// The key of the workflow's shared context its answer is written to (by
    /// compare-and-set; the step's id when not given). Steps naming one key contribute to
    /// one work product, and a lost write is a conflict settled by the workflow's policy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub writes: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Plan {
    pub steps: Vec<PlanStep>,
}

impl Plan {
    /// Every problem with this plan (fields named as in the request, `steps[i].…`), or the
    /// step indexes in an order where each comes after its dependencies.
    pub fn check(
        &self,
        known_capability: impl Fn(&str) -> bool,
        known_agent: impl Fn(&str) -> bool,
        limits: PlanLimits,
    ) -> Result<Vec<usize>, Vec<FieldError>> {
        let mut errors = Vec::new();
        if self.steps.is_empty() {
            errors.push(FieldError::new("steps", "must have at least one step"));
        }
        if self.steps.len() > limits.max_steps {
            errors.push(FieldError::new(
                "steps",
                format!(
                    "has {} steps; at most {} are allowed",
                    self.steps.len(),
                    limits.max_steps
                ),
            ));
        }
        let mut index = BTreeMap::new();
        let mut seen_work = BTreeSet::new();
        for (i, step) in self.steps.iter().enumerate() {
            let at = |f: &str| format!("steps[{i}].{f}");
            check_token(&at("id"), &step.id, MAX_STEP_ID_LEN, &mut errors);
            if index.insert(step.id.as_str(), i).is_some() {
                errors.push(FieldError::new(
                    at("id"),
                    format!("`{}` is used twice", step.id),
                ));
            }
            if !known_capability(&step.capability) {
                errors.push(FieldError::new(
                    at("capability"),
                    format!("no agent has the capability `{}`", step.capability),
                ));
            }
            if step.instruction.trim().is_empty() {
                errors.push(FieldError::new(at("instruction"), "must not be empty"));
            } else if step.instruction.len() > MAX_INSTRUCTION_LEN {
                errors.push(FieldError::new(
                    at("instruction"),
                    format!("must be at most {MAX_INSTRUCTION_LEN} bytes"),
                ));
            }
            if let Some(key) = &step.writes {
                check_token(&at("writes"), key, MAX_STEP_ID_LEN, &mut errors);
            }
            if let Some(agent) = &step.agent
                && !known_agent(agent)
            {
                errors.push(FieldError::new(
                    at("agent"),
                    format!("no agent is named `{agent}`"),
                ));
            }
            if !seen_work.insert((step.capability.as_str(), step.instruction.trim())) {
                errors.push(FieldError::new(
                    at("instruction"),
                    "repeats an earlier step",
                ));
            }
        }
        let mut dependents: BTreeMap<&str, usize> = BTreeMap::new();
        for (i, step) in self.steps.iter().enumerate() {
            for (j, dep) in step.depends_on.iter().enumerate() {
                if !index.contains_key(dep.as_str()) {
                    errors.push(FieldError::new(
                        format!("steps[{i}].depends_on[{j}]"),
                        format!("no step has the id `{dep}`"),
                    ));
                }
                *dependents.entry(dep.as_str()).or_default() += 1;
            }
        }
        let roots = self
            .steps
            .iter()
            .filter(|s| s.depends_on.is_empty())
            .count();
        let widest = dependents.values().copied().max().unwrap_or(0).max(roots);
        if widest > limits.max_fan_out {
            errors.push(FieldError::new(
                "steps",
                format!(
                    "{widest} steps start from one point; at most {} may",
                    limits.max_fan_out
                ),
            ));
        }
        if !errors.is_empty() {
            return Err(errors);
        }
        let order = self
            .order(&index)
            .ok_or_else(|| vec![FieldError::new("steps", "the dependencies form a cycle")])?;
        let depth = self.depth(&order, &index);
        if depth > limits.max_depth {
            return Err(vec![FieldError::new(
                "steps",
                format!(
                    "a chain of {depth} dependent steps; at most {} are allowed",
                    limits.max_depth
                ),
            )]);
        }
        Ok(order)
    }

    /// Kahn's algorithm: step indexes, dependencies first; `None` on a cycle.
    fn order(&self, index: &BTreeMap<&str, usize>) -> Option<Vec<usize>> {
        let mut waiting: Vec<usize> = self.steps.iter().map(|s| s.depends_on.len()).collect();
        let mut ready: Vec<usize> = (0..self.steps.len()).filter(|i| waiting[*i] == 0).collect();
        let mut order = Vec::with_capacity(self.steps.len());
        while let Some(i) = ready.pop() {
            order.push(i);
            for (j, step) in self.steps.iter().enumerate() {
                for dep in &step.depends_on {
                    if index.get(dep.as_str()) == Some(&i) {
                        waiting[j] -= 1;
                        if waiting[j] == 0 {
                            ready.push(j);
                        }
                    }
                }
            }
        }
        (order.len() == self.steps.len()).then_some(order)
    }

    /// Steps in the longest dependency chain.
    fn depth(&self, order: &[usize], index: &BTreeMap<&str, usize>) -> usize {
        let mut level = vec![1usize; self.steps.len()];
        for &i in order {
            for dep in &self.steps[i].depends_on {
                if let Some(&d) = index.get(dep.as_str()) {
                    level[i] = level[i].max(level[d] + 1);
                }
            }
        }
        level.into_iter().max().unwrap_or(0)
    }
}

/// The JSON schema a planner's answer must follow (sent as `response_format` where the
/// provider supports structured output; checked by [`Plan::check`] either way).
pub fn schema() -> Value {
    json!({
        "type": "object",
        "additionalProperties": false,
        "required": ["steps"],
        "properties": {
            "steps": {
                "type": "array",
                "minItems": 1,
                "items": {
                    "type": "object",
                    "additionalProperties": false,
                    "required": ["id", "capability", "instruction", "depends_on"],
                    "properties": {
                        "id": {"type": "string", "pattern": "^[a-z0-9][a-z0-9_-]*$"},
                        "capability": {"type": "string"},
                        "instruction": {"type": "string"},
                        "depends_on": {"type": "array", "items": {"type": "string"}}
                    }
                }
            }
        }
    })
}

/// Reads a plan out of a planner's answer: the JSON object itself, or inside a fenced code
/// block or surrounding prose (models add both even when asked not to).
pub fn parse(text: &str) -> Result<Plan, String> {
    let start = text.find('{').ok_or("the answer contains no JSON object")?;
    let end = text
        .rfind('}')
        .ok_or("the answer contains no JSON object")?;
    let json = text
        .get(start..=end)
        .ok_or("the answer contains no JSON object")?;
    serde_json::from_str(json).map_err(|e| format!("the plan is not valid: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn step(id: &str, capability: &str, deps: &[&str]) -> PlanStep {
        PlanStep {
            id: id.into(),
            capability: capability.into(),
            instruction: format!("do {id}"),
            depends_on: deps.iter().map(|d| (*d).to_owned()).collect(),
            agent: None,
            writes: None,
        }
    }

    fn check(steps: Vec<PlanStep>) -> Result<Vec<usize>, Vec<FieldError>> {
        Plan { steps }.check(|c| c != "ghost", |a| a == "writer", PlanLimits::default())
    }

    fn fields(r: Result<Vec<usize>, Vec<FieldError>>) -> Vec<String> {
        r.unwrap_err().into_iter().map(|e| e.field).collect()
    }

    #[test]
    fn dependencies_come_first_in_the_order() {
        let order = check(vec![
            step("write", "writing", &["a", "b"]),
            step("a", "research", &[]),
            step("b", "research", &[]),
            step("review", "review", &["write"]),
        ])
        .unwrap();
        let pos = |i: usize| order.iter().position(|x| *x == i).unwrap();
        assert!(pos(1) < pos(0) && pos(2) < pos(0) && pos(0) < pos(3));
    }

    #[test]
    fn bad_plans_name_what_is_wrong() {
        assert_eq!(fields(check(vec![])), ["steps"]);
        assert_eq!(
            fields(check(vec![
                step("a", "ghost", &[]),
                step("a", "research", &["zz"])
            ])),
            [
                "steps[0].capability",
                "steps[1].id",
                "steps[1].depends_on[0]"
            ]
        );
        assert_eq!(
            fields(check(vec![
                step("a", "research", &["b"]),
                step("b", "research", &["a"])
            ])),
            ["steps"]
        );
        let mut twice = step("b", "research", &[]);
        twice.instruction = "do a".into();
        assert_eq!(
            fields(check(vec![step("a", "research", &[]), twice])),
            ["steps[1].instruction"]
        );
        let mut named = step("a", "writing", &[]);
        named.agent = Some("nobody".into());
        assert_eq!(fields(check(vec![named])), ["steps[0].agent"]);
    }

    #[test]
    fn guards_bound_size_depth_and_fan_out() {
        let limits = PlanLimits::default();
        let many: Vec<PlanStep> = (0..=limits.max_steps)
            .map(|i| step(&format!("s{i}"), "research", &[]))
            .collect();
        assert!(fields(check(many)).contains(&"steps".to_owned()));
        let chain: Vec<PlanStep> = (0..=limits.max_depth)
            .map(|i| {
                let mut s = step(&format!("s{i}"), "research", &[]);
                if i > 0 {
                    s.depends_on = vec![format!("s{}", i - 1)];
                }
                s
            })
            .collect();
        let errors = check(chain).unwrap_err();
        assert!(errors[0].problem.contains("chain"), "{errors:?}");
        let mut wide = vec![step("root", "research", &[])];
        wide.extend((0..=limits.max_fan_out).map(|i| step(&format!("w{i}"), "writing", &["root"])));
        assert!(
            check(wide).unwrap_err()[0]
                .problem
                .contains("start from one point")
        );
    }

    #[test]
    fn plans_are_read_out_of_prose_and_fences() {
        let text = "Here is the plan:\n```json\n{\"steps\": [{\"id\": \"a\", \"capability\": \"research\", \"instruction\": \"x\", \"depends_on\": []}]}\n```\nDone.";
        assert_eq!(parse(text).unwrap().steps[0].id, "a");
        assert!(parse("no plan here").is_err());
        assert!(parse("{\"steps\": 3}").is_err());
    }
}
