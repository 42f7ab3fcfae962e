//! A step's chat request: the agent's system prompt, then one user message with the goal,
//! the step's instruction, the outputs of the steps it depends on and the shared context.
//! Planner steps also get the capabilities to plan with and the plan's JSON schema (as
//! `response_format`); review steps get the verdict's schema. An agent whose profile lists
//! built-in tools is offered their schemas as `tools`. The request goes to the
//! agent's route like any chat completion, so steps get failover, health and the DLQ.

use serde_json::{Map, Value, json};

use crate::plan::PlanLimits;
use crate::workflow::{Step, StepKind, Workflow};
use shared::agents::AgentProfile;

/// Most characters of one input (a dependency's output, the context) put in a prompt; the
/// rest is cut with a note. (Token-budgeted assembly replaces this bound.)
pub const MAX_INPUT_CHARS: usize = 16_000;
/// The `json_schema` name of a plan, which structured-output providers echo.
pub const PLAN_SCHEMA_NAME: &str = "switchyard_plan";
/// The `json_schema` name of a review verdict.
pub const REVIEW_SCHEMA_NAME: &str = "switchyard_review";

/// The OpenAI chat request for `step` of `wf`, run by `agent`. `capabilities` are those a
/// plan may use (every agent's, or the team's).
pub fn request(
    agent: &AgentProfile,
    wf: &Workflow,
    step: &Step,
    capabilities: &[String],
    limits: PlanLimits,
) -> Map<String, Value> {
    let mut user = format!(
        "# Goal\n{}\n\n# Your step ({})\n{}\n",
        wf.spec.goal, step.id, step.instruction
    );
    for dep in &step.depends_on {
        if let Some(output) = wf.step(dep).and_then(|s| s.output.as_deref()) {
            user.push_str(&format!("\n# Output of step `{dep}`\n{}\n", clip(output)));
        }
    }
    if let Some(context) = &wf.spec.context {
        let text = match context {
            Value::String(s) => s.clone(),
            other => other.to_string(),
        };
        user.push_str(&format!("\n# Shared context\n{}\n", clip(&text)));
    }
    let response_format = match step.kind {
        StepKind::Plan => {
            user.push_str(&format!(
                "\n# Capabilities you can plan with\n{}\n\nAt most {} steps, chains at most {} deep. Example of the format:\n{}\n",
                capabilities.join(", "),
                limits.max_steps,
                limits.max_depth,
                example_plan(capabilities)
            ));
            Some(schema_format(PLAN_SCHEMA_NAME, plan_schema(capabilities)))
        }
        StepKind::Review => {
            if let Some(last) = step.depends_on.last() {
                user.push_str(&format!(
                    "\n(The output of `{last}` above is the deliverable under review.)\n"
                ));
            }
            Some(schema_format(REVIEW_SCHEMA_NAME, review_schema()))
        }
        StepKind::Work | StepKind::Synthesize => None,
    };
    let mut body = agent_request(agent, &user);
    if let Some(format) = response_format {
        body.insert("response_format".into(), format);
    }
    body
}

/// The chat request that puts `question` from `asker` (an agent, or `None` for a direct
/// chat request) to `agent` (`ask_agent`): its system prompt, then the question.
pub fn question(agent: &AgentProfile, asker: Option<&str>, question: &str) -> Map<String, Value> {
    let from = asker.map_or_else(
        || "A caller asks you a question".to_owned(),
        |a| format!("Agent `{a}` asks you a question during its own work"),
    );
    let user = format!(
        "# Question\n{from}. Answer it directly and completely; it sees only your answer.\n\n{}\n",
        clip(question)
    );
    agent_request(agent, &user)
}

/// A request to `agent`'s route: its system prompt, then `user`, offering the built-in tools
/// it may use.
fn agent_request(agent: &AgentProfile, user: &str) -> Map<String, Value> {
    let mut body = Map::new();
    body.insert("model".into(), json!(agent.route));
    body.insert(
        "messages".into(),
        json!([
            {"role": "system", "content": agent.system_prompt},
            {"role": "user", "content": user},
        ]),
    );
    offer_tools(agent, &mut body);
    body
}

/// Offers the built-in tools `agent` may use as functions; the worker's tool loop runs the
/// calls (and refuses any other).
fn offer_tools(agent: &AgentProfile, body: &mut Map<String, Value>) {
    let tools: Vec<Value> = agent
        .tools
        .iter()
        .filter_map(|name| shared::tools::builtin(name))
        .map(shared::tools::ToolSpec::function)
        .collect();
    if !tools.is_empty() {
        body.insert("tools".into(), Value::Array(tools));
    }
}

fn clip(text: &str) -> String {
    if text.chars().count() <= MAX_INPUT_CHARS {
        return text.to_owned();
    }
    let kept: String = text.chars().take(MAX_INPUT_CHARS).collect();
    format!("{kept}\n[… cut: the input was longer than {MAX_INPUT_CHARS} characters]")
}

fn schema_format(name: &str, schema: Value) -> Value {
    json!({"type": "json_schema", "json_schema": {"name": name, "strict": true, "schema": schema}})
}

/// The plan schema with `capability` limited to `capabilities`.
pub fn plan_schema(capabilities: &[String]) -> Value {
    let mut schema = crate::plan::schema();
    schema["properties"]["steps"]["items"]["properties"]["capability"] =
        json!({"type": "string", "enum": capabilities});
    schema
}

/// The verdict schema a reviewer answers with.
pub fn review_schema() -> Value {
    json!({
        "type": "object",
        "additionalProperties": false,
        "required": ["verdict", "score", "feedback"],
        "properties": {
            "verdict": {"type": "string", "enum": ["approve", "revise"]},
            "score": {"type": "number", "minimum": 0, "maximum": 1},
            "feedback": {"type": "string"}
        }
    })
}

/// A small plan in the expected format, using the first capabilities available: two
/// independent steps and one that needs both.
fn example_plan(capabilities: &[String]) -> String {
    let first = capabilities.first().map_or("research", String::as_str);
    let second = capabilities.get(1).map_or(first, String::as_str);
    json!({"steps": [
        {"id": "gather", "capability": first, "instruction": "Collect the facts the goal needs.", "depends_on": []},
        {"id": "context", "capability": first, "instruction": "Collect background and comparable cases.", "depends_on": []},
        {"id": "assess", "capability": second, "instruction": "Assess the facts and background against the goal.", "depends_on": ["gather", "context"]}
    ]})
    .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::workflow::{Budget, Spec, StepStatus, Usage};
    use shared::{Priority, TaskId};

    fn agent() -> AgentProfile {
        AgentProfile {
            name: "writer".into(),
            role: "Writer".into(),
            capabilities: vec!["writing".into()],
            route: "agents".into(),
            system_prompt: "You are the Writer.".into(),
            tools: vec![],
            max_concurrency: 1,
            description: String::new(),
        }
    }

    fn step(id: &str, kind: StepKind, deps: &[&str], output: Option<&str>) -> Step {
        Step {
            id: id.into(),
            kind,
            capability: "writing".into(),
            instruction: format!("do {id}"),
            depends_on: deps.iter().map(|d| (*d).to_owned()).collect(),
            agent: None,
            routing: None,
            status: if output.is_some() {
                StepStatus::Completed
            } else {
                StepStatus::Pending
            },
            task_id: TaskId::new(),
            dispatched_by: None,
            output: output.map(str::to_owned),
            error: None,
            usage: Usage::default(),
            tool_calls: Vec::new(),
            writes: None,
            attempt: 0,
            written: None,
        }
    }

    fn workflow(steps: Vec<Step>) -> Workflow {
        let spec = Spec {
            goal: "Explain e-bikes".into(),
            team: None,
            agents: None,
            capabilities: None,
            steps: None,
            context: Some(json!("Audience: city planners")),
            priority: Priority::Normal,
            budget: Budget::default(),
            approval: false,
            on_conflict: Default::default(),
        };
        let mut wf = Workflow::new(TaskId::new(), spec, 0, 1000);
        wf.steps = steps;
        wf
    }

    #[test]
    fn a_step_sees_the_goal_its_inputs_and_the_context() {
        let wf = workflow(vec![
            step("facts", StepKind::Work, &[], Some("Bikes are fast.")),
            step("write", StepKind::Synthesize, &["facts"], None),
        ]);
        let body = request(&agent(), &wf, &wf.steps[1], &[], PlanLimits::default());
        assert_eq!(body["model"], "agents");
        assert_eq!(body["messages"][0]["content"], "You are the Writer.");
        let user = body["messages"][1]["content"].as_str().unwrap();
        for part in [
            "Explain e-bikes",
            "do write",
            "Output of step `facts`",
            "Bikes are fast.",
            "city planners",
        ] {
            assert!(user.contains(part), "{part} missing from {user}");
        }
        assert!(body.get("response_format").is_none());
    }

    #[test]
    fn planners_get_the_capabilities_and_the_schema_reviewers_the_verdict() {
        let wf = workflow(vec![step("@plan", StepKind::Plan, &[], None)]);
        let caps = vec!["research".to_owned(), "analysis".to_owned()];
        let body = request(&agent(), &wf, &wf.steps[0], &caps, PlanLimits::default());
        assert_eq!(
            body["response_format"]["json_schema"]["name"],
            PLAN_SCHEMA_NAME
        );
        assert_eq!(
            body["response_format"]["json_schema"]["schema"]["properties"]["steps"]["items"]["properties"]
                ["capability"]["enum"],
            json!(caps)
        );
        let user = body["messages"][1]["content"].as_str().unwrap();
        assert!(user.contains("research, analysis"));
        // The example in the prompt is itself a valid plan.
        let example = crate::plan::parse(user.rsplit("format:\n").next().unwrap()).unwrap();
        assert!(
            example
                .check(
                    |c| caps.iter().any(|x| x == c),
                    |_| false,
                    PlanLimits::default()
                )
                .is_ok()
        );
        let review = workflow(vec![
            step("@synthesis", StepKind::Synthesize, &[], Some("text")),
            step("@review", StepKind::Review, &["@synthesis"], None),
        ]);
        let body = request(
            &agent(),
            &review,
            &review.steps[1],
            &caps,
            PlanLimits::default(),
        );
        assert_eq!(
            body["response_format"]["json_schema"]["name"],
            REVIEW_SCHEMA_NAME
        );
    }

    #[test]
    fn an_agents_tools_are_offered_as_functions() {
        let wf = workflow(vec![step("a", StepKind::Work, &[], None)]);
        let body = request(&agent(), &wf, &wf.steps[0], &[], PlanLimits::default());
        assert!(body.get("tools").is_none());
        let analyst = AgentProfile {
            tools: vec!["calculator".into()],
            ..agent()
        };
        let body = request(&analyst, &wf, &wf.steps[0], &[], PlanLimits::default());
        assert_eq!(body["tools"][0]["type"], "function");
        assert_eq!(body["tools"][0]["function"]["name"], "calculator");
        assert_eq!(body["tools"].as_array().unwrap().len(), 1);
    }

    #[test]
    fn long_inputs_are_cut_with_a_note() {
        let long = "x".repeat(MAX_INPUT_CHARS + 10);
        let wf = workflow(vec![
            step("a", StepKind::Work, &[], Some(&long)),
            step("b", StepKind::Work, &["a"], None),
        ]);
        let body = request(&agent(), &wf, &wf.steps[1], &[], PlanLimits::default());
        assert!(
            body["messages"][1]["content"]
                .as_str()
                .unwrap()
                .contains("[… cut")
        );
    }
}
