//! A step's chat request: the agent's system prompt, then one user message with the goal,
//! the step's instruction, the outputs of the steps it depends on, the shared context, the
//! workflow's thread and retrieved memories, fitted to the route's context window
//! ([`crate::budget`]). Planner steps also get the capabilities to plan with and the plan's
//! JSON schema (as `response_format`); review steps get the verdict's schema. An agent whose
//! profile lists built-in tools is offered their schemas as `tools`. The request goes to the
//! agent's route like any chat completion, so steps get failover, health and the DLQ.
//!
//! Ranks, most kept first: the system prompt and the instruction (never cut), then the
//! dependencies' outputs (in `depends_on` order), the workflow's own context, the shared
//! context entries, the thread's messages (the latest first), the memories (as given, the
//! most relevant first).

use serde_json::{Map, Value, json};
use shared::tokens::{PromptRecord, Window, count_request};

use crate::budget::{self, Kind, Section, TooLarge};
use crate::plan::PlanLimits;
use crate::workflow::{Step, StepKind, Workflow};
use shared::agents::AgentProfile;

/// Most characters of a question put to an agent (`ask_agent`); the rest is cut with a note.
pub const MAX_INPUT_CHARS: usize = 16_000;
/// The `json_schema` name of a plan, which structured-output providers echo.
pub const PLAN_SCHEMA_NAME: &str = "switchyard_plan";
/// The `json_schema` name of a review verdict.
pub const REVIEW_SCHEMA_NAME: &str = "switchyard_review";

/// One input a step may read besides its dependencies: a shared-context entry, a thread
/// message, a memory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Input {
    /// Where it came from (the context key, the message or memory id), kept in the record.
    pub id: String,
    /// Its heading in the prompt and its name in the record.
    pub label: String,
    pub text: String,
}

/// The inputs of a step beyond its workflow: each list in its own order (the thread oldest
/// first, the memories most relevant first).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StepInputs {
    pub context: Vec<Input>,
    pub thread: Vec<Input>,
    pub memories: Vec<Input>,
}

/// The OpenAI chat request for `step` of `wf`, run by `agent`, fitted to `window` (the
/// smallest of the agent's route's targets), with the record of what it kept.
/// `capabilities` are those a plan may use (every agent's, or the team's). An error when
/// the system prompt and the instruction alone do not fit.
pub fn request(
    agent: &AgentProfile,
    wf: &Workflow,
    step: &Step,
    capabilities: &[String],
    limits: PlanLimits,
    inputs: &StepInputs,
    window: Window,
) -> Result<(Map<String, Value>, PromptRecord), TooLarge> {
    let instruction = format!(
        "# Goal\n{}\n\n# Your step ({})\n{}\n",
        wf.spec.goal, step.id, step.instruction
    );
    // What a planner or a reviewer answers with, after the inputs: required like the
    // instruction.
    let mut closing = String::new();
    let response_format = match step.kind {
        StepKind::Plan => {
            closing.push_str(&format!(
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
                closing.push_str(&format!(
                    "\n(The output of `{last}` above is the deliverable under review.)\n"
                ));
            }
            Some(schema_format(REVIEW_SCHEMA_NAME, review_schema()))
        }
        StepKind::Work | StepKind::Synthesize => None,
    };
    let mut sections = vec![
        Section::new(Kind::System, "system prompt", agent.system_prompt.clone()),
        Section::new(Kind::Instruction, "goal and instruction", instruction),
    ];
    for (i, dep) in step.depends_on.iter().enumerate() {
        if let Some(output) = wf.step(dep).and_then(|s| s.output.as_deref()) {
            let mut section = Section::new(
                Kind::Dependency,
                format!("output of step `{dep}`"),
                format!("\n# Output of step `{dep}`\n{output}\n"),
            );
            section.id = Some(dep.clone());
            section.rank += rank_offset(i);
            sections.push(section);
        }
    }
    if let Some(context) = &wf.spec.context {
        let text = match context {
            Value::String(s) => s.clone(),
            other => other.to_string(),
        };
        sections.push(Section::new(
            Kind::Context,
            "workflow context",
            format!("\n# Shared context\n{text}\n"),
        ));
    }
    let listed = |kind: Kind, heading: &str, list: &[Input], latest_first: bool| {
        let n = list.len();
        list.iter()
            .enumerate()
            .map(move |(i, input)| {
                let mut section = Section::new(
                    kind,
                    input.label.clone(),
                    format!("\n# {heading}: {}\n{}\n", input.label, input.text),
                );
                section.id = Some(input.id.clone());
                // Within the kind: after the workflow's own context, in the order wanted.
                section.rank += 1 + rank_offset(if latest_first { n - 1 - i } else { i });
                section
            })
            .collect::<Vec<_>>()
    };
    sections.extend(listed(
        Kind::Context,
        "Shared context",
        &inputs.context,
        false,
    ));
    sections.extend(listed(Kind::Thread, "Thread message", &inputs.thread, true));
    sections.extend(listed(
        Kind::Memory,
        "From past work",
        &inputs.memories,
        false,
    ));
    if !closing.is_empty() {
        sections.push(Section::new(Kind::Instruction, "answer format", closing));
    }

    // What the request takes besides the sections: message framing, tools, the schema.
    let mut body = agent_request(agent, "", "");
    if let Some(format) = response_format {
        body.insert("response_format".into(), format);
    }
    let overhead = count_request(window.encoding, &body);
    let budget = window.prompt_budget();
    let fitted =
        budget::fit(&sections, budget.saturating_sub(overhead), window.encoding).map_err(|e| {
            TooLarge {
                needed: e.needed + overhead,
                budget,
            }
        })?;
    let mut texts = fitted.texts.into_iter();
    let system = texts.next().flatten().unwrap_or_default();
    let user: String = texts.flatten().collect();
    body.insert(
        "messages".into(),
        json!([
            {"role": "system", "content": system},
            {"role": "user", "content": user},
        ]),
    );
    let record = PromptRecord {
        window: window.tokens,
        output_reserve: window.reserve,
        encoding: window.encoding,
        prompt_tokens: count_request(window.encoding, &body),
        sections: fitted.record,
    };
    Ok((body, record))
}

/// The rank of the `i`-th section of a kind above the kind's first.
fn rank_offset(i: usize) -> u32 {
    u32::try_from(i)
        .unwrap_or(u32::MAX)
        .min(budget::RANK_STEP - 2)
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
    agent_request(agent, &agent.system_prompt, &user)
}

/// A request to `agent`'s route: `system`, then `user`, offering the built-in tools it may
/// use.
fn agent_request(agent: &AgentProfile, system: &str, user: &str) -> Map<String, Value> {
    let mut body = Map::new();
    body.insert("model".into(), json!(agent.route));
    body.insert(
        "messages".into(),
        json!([
            {"role": "system", "content": system},
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
    use shared::tokens::{Encoding, SectionStatus};
    use shared::{Priority, TaskId};

    fn wide() -> Window {
        Window::of_model("gpt-4o")
    }

    /// The request for `step` of `wf` by `agent`, with no extra inputs, in a wide window.
    fn plain(
        agent: &AgentProfile,
        step: &Step,
        wf: &Workflow,
        capabilities: &[String],
    ) -> Map<String, Value> {
        request(
            agent,
            wf,
            step,
            capabilities,
            PlanLimits::default(),
            &StepInputs::default(),
            wide(),
        )
        .unwrap()
        .0
    }

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
            artifact: None,
            error: None,
            usage: Usage::default(),
            tool_calls: Vec::new(),
            writes: None,
            attempt: 0,
            written: None,
            prompt: None,
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
        let body = plain(&agent(), &wf.steps[1], &wf, &[]);
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
        let body = plain(&agent(), &wf.steps[0], &wf, &caps);
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
        let body = plain(&agent(), &review.steps[1], &review, &caps);
        assert_eq!(
            body["response_format"]["json_schema"]["name"],
            REVIEW_SCHEMA_NAME
        );
    }

    #[test]
    fn an_agents_tools_are_offered_as_functions() {
        let wf = workflow(vec![step("a", StepKind::Work, &[], None)]);
        let body = plain(&agent(), &wf.steps[0], &wf, &[]);
        assert!(body.get("tools").is_none());
        let analyst = AgentProfile {
            tools: vec!["calculator".into()],
            ..agent()
        };
        let body = plain(&analyst, &wf.steps[0], &wf, &[]);
        assert_eq!(body["tools"][0]["type"], "function");
        assert_eq!(body["tools"][0]["function"]["name"], "calculator");
        assert_eq!(body["tools"].as_array().unwrap().len(), 1);
    }

    #[test]
    fn inputs_beyond_the_window_are_trimmed_and_dropped_with_a_record() {
        let long = "The market grew fast. ".repeat(2_000);
        let wf = workflow(vec![
            step("a", StepKind::Work, &[], Some(&long)),
            step("b", StepKind::Work, &[], Some(&long)),
            step("c", StepKind::Synthesize, &["a", "b"], None),
        ]);
        let inputs = StepInputs {
            context: vec![Input {
                id: "pricing".into(),
                label: "pricing".into(),
                text: "Bikes cost 2000 EUR.".into(),
            }],
            thread: (0..3)
                .map(|i| Input {
                    id: format!("m{i}"),
                    label: format!("reviewer, message {i}"),
                    text: format!("note {i} {}", "word ".repeat(210)),
                })
                .collect(),
            memories: vec![Input {
                id: "mem-1".into(),
                label: "a past review".into(),
                text: "Cite sources.".into(),
            }],
        };
        let window = Window {
            tokens: 4_000,
            reserve: 500,
            encoding: Encoding::O200k,
        };
        let (body, record) = request(
            &agent(),
            &wf,
            &wf.steps[2],
            &[],
            PlanLimits::default(),
            &inputs,
            window,
        )
        .unwrap();
        assert!(record.prompt_tokens <= 3_500, "{record:?}");
        assert_eq!(record.prompt_tokens, count_request(Encoding::O200k, &body));
        let status = |label: &str| {
            record
                .sections
                .iter()
                .find(|s| s.label == label)
                .map(|s| s.status)
                .unwrap()
        };
        assert_eq!(status("system prompt"), SectionStatus::Included);
        assert_eq!(status("goal and instruction"), SectionStatus::Included);
        assert_eq!(status("output of step `a`"), SectionStatus::Trimmed);
        for dropped in [
            "output of step `b`",
            "workflow context",
            "pricing",
            "a past review",
        ] {
            assert_eq!(status(dropped), SectionStatus::Dropped, "{dropped}");
        }
        let user = body["messages"][1]["content"].as_str().unwrap();
        assert!(user.contains("# Output of step `a`"));
        assert!(user.contains("trimmed to fit the context window"));
        assert!(!user.contains("# Output of step `b`"));
        // With room, everything is in, in order, and the latest thread message is kept first.
        let (body, record) = request(
            &agent(),
            &wf,
            &wf.steps[2],
            &[],
            PlanLimits::default(),
            &inputs,
            wide(),
        )
        .unwrap();
        assert!(
            record
                .sections
                .iter()
                .all(|s| s.status == SectionStatus::Included)
        );
        let user = body["messages"][1]["content"].as_str().unwrap();
        let at = |part: &str| user.find(part).unwrap();
        assert!(at("Output of step `a`") < at("Output of step `b`"));
        assert!(at("Output of step `b`") < at("pricing"));
        assert!(at("note 0") < at("note 2") && at("note 2") < at("Cite sources."));
        assert_eq!(record.sections.last().unwrap().id.as_deref(), Some("mem-1"));
        let tight = Window {
            tokens: 1_000,
            reserve: 100,
            encoding: Encoding::Estimate,
        };
        let small = workflow(vec![
            step("a", StepKind::Work, &[], Some(&"x ".repeat(300))),
            step("c", StepKind::Synthesize, &["a"], None),
        ]);
        let (_, record) = request(
            &agent(),
            &small,
            &small.steps[1],
            &[],
            PlanLimits::default(),
            &inputs,
            tight,
        )
        .unwrap();
        let latest = record
            .sections
            .iter()
            .find(|s| s.id.as_deref() == Some("m2"));
        let oldest = record
            .sections
            .iter()
            .find(|s| s.id.as_deref() == Some("m0"));
        assert_eq!(
            latest.unwrap().status,
            SectionStatus::Included,
            "{record:?}"
        );
        assert_ne!(
            oldest.unwrap().status,
            SectionStatus::Included,
            "{record:?}"
        );
    }

    #[test]
    fn a_prompt_whose_instruction_cannot_fit_is_an_error() {
        let wf = workflow(vec![step("a", StepKind::Work, &[], None)]);
        let tiny = Window {
            tokens: 40,
            reserve: 10,
            encoding: Encoding::Cl100k,
        };
        let err = request(
            &agent(),
            &wf,
            &wf.steps[0],
            &[],
            PlanLimits::default(),
            &StepInputs::default(),
            tiny,
        )
        .unwrap_err();
        assert_eq!(err.budget, 30);
        assert!(err.needed > 30);
    }
}
