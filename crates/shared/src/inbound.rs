//! Reading a task exactly as anyone may have published it on `tasks.<capability>.<priority>`:
//! field by field, so a refusal names the field that is missing or wrong, and checked against
//! the subject it arrived on. Pure and total: any bytes give a [`Task`] or a [`Rejection`],
//! never a panic. A rejection keeps whatever could still be read (the id, `reply_to`), so
//! the worker can answer the publisher instead of leaving it waiting.

use std::collections::BTreeMap;
use std::fmt;

use serde_json::value::RawValue;
use serde_json::{Map, Value};

use crate::limits::{MAX_JSON_DEPTH, MAX_SUBJECT_LEN, MAX_TASK_DEPTH, check_route, json_depth};
use crate::names::task_subject;
use crate::{Capability, Priority, StepRef, Task, TaskId, reply};

/// Why a published task cannot be run, and what of it could still be read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    /// The task id, from the payload's `id` or else the `Nats-Msg-Id` header, when either
    /// is a UUID.
    pub id: Option<TaskId>,
    /// The payload's `reply_to`, when it is a usable subject.
    pub reply_to: Option<String>,
    pub capability: Option<Capability>,
    pub priority: Option<Priority>,
    pub route: Option<String>,
    pub created_ms: Option<u64>,
    pub problem: Problem,
}

/// What is wrong with a published task.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Problem {
    /// The payload is not JSON (the parser's words).
    NotJson(String),
    /// The payload is JSON but not an object.
    NotObject,
    /// The payload nests deeper than [`MAX_TASK_DEPTH`] outside its `request`.
    TooDeep,
    /// A required field is absent (or `null`).
    Missing(&'static str),
    /// A field is present but unusable: the field and what it must be.
    Invalid(&'static str, String),
    /// A field disagrees with the subject the task was published on.
    SubjectMismatch {
        field: &'static str,
        value: String,
        subject: String,
    },
}

impl Problem {
    /// The task field the problem is about, if it is about one.
    pub fn field(&self) -> Option<&'static str> {
        match self {
            Problem::NotJson(_) | Problem::NotObject | Problem::TooDeep => None,
            Problem::Missing(field)
            | Problem::Invalid(field, _)
            | Problem::SubjectMismatch { field, .. } => Some(field),
        }
    }
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Problem::NotJson(why) => write!(f, "the task is not valid JSON: {why}"),
            Problem::NotObject => f.write_str("the task must be a JSON object"),
            Problem::TooDeep => write!(
                f,
                "the task nests deeper than {MAX_TASK_DEPTH} levels of arrays and objects"
            ),
            Problem::Missing(field) => write!(f, "the task field `{field}` is required"),
            Problem::Invalid(field, rule) => write!(f, "the task field `{field}` {rule}"),
            Problem::SubjectMismatch {
                field,
                value,
                subject,
            } => write!(
                f,
                "the task field `{field}` is {value:?} but the task was published on {subject}"
            ),
        }
    }
}

/// Decodes a task published on `subject` (with `Nats-Msg-Id` header `msg_id`, if any)
/// and checks that its capability and priority are the subject's, and that its `reply_to`
/// is a reply subject ([`crate::reply::allowed`] under `reply_prefixes`).
pub fn read_task(
    subject: &str,
    payload: &[u8],
    msg_id: Option<&str>,
    reply_prefixes: &[String],
) -> Result<Task, Box<Rejection>> {
    let header_id = msg_id.and_then(|m| m.parse::<TaskId>().ok());
    if json_depth(payload) > MAX_TASK_DEPTH {
        return Err(too_deep(payload, header_id, reply_prefixes));
    }
    let fields = match serde_json::from_slice::<Value>(payload) {
        Ok(Value::Object(fields)) => fields,
        Ok(_) => return Err(Rejection::bare(header_id, Problem::NotObject)),
        Err(e) => {
            return Err(Rejection::bare(header_id, Problem::NotJson(e.to_string())));
        }
    };
    let payload_id = fields
        .get("id")
        .and_then(Value::as_str)
        .and_then(|s| s.parse::<TaskId>().ok());
    let checked = check_fields(&fields)
        .and_then(|()| check_reply_to(&fields, payload_id, reply_prefixes))
        .and_then(|()| check_subject(&fields, subject));
    if let Err(problem) = checked {
        // What can still be read, for the answer: only worked out for a refused task.
        return Err(Box::new(Rejection::partial(
            &fields,
            header_id,
            reply_prefixes,
            problem,
        )));
    }
    // Every field was checked above; this only fails if the two disagree, and then the
    // publisher still gets the decoder's words, at its (checked) reply subject.
    let reply_to = fields
        .get("reply_to")
        .and_then(Value::as_str)
        .map(str::to_owned);
    serde_json::from_value(Value::Object(fields)).map_err(|e| {
        let mut rejection =
            Rejection::bare(payload_id.or(header_id), Problem::NotJson(e.to_string()));
        rejection.reply_to = reply_to;
        rejection
    })
}

/// The rejection of a task nesting deeper than [`MAX_TASK_DEPTH`], which serde_json may not
/// parse at all: its top-level fields are read one by one (skipping a value does not
/// recurse), so the publisher's id and `reply_to` still get their answer.
fn too_deep(
    payload: &[u8],
    header_id: Option<TaskId>,
    reply_prefixes: &[String],
) -> Box<Rejection> {
    let Ok(raw) = serde_json::from_slice::<BTreeMap<String, Box<RawValue>>>(payload) else {
        return Rejection::bare(header_id, Problem::TooDeep);
    };
    let mut fields = Map::new();
    let mut request_too_deep = false;
    for (name, value) in raw {
        if json_depth(value.get().as_bytes()) > MAX_JSON_DEPTH {
            request_too_deep |= name == "request";
            continue;
        }
        if let Ok(value) = serde_json::from_str::<Value>(value.get()) {
            fields.insert(name, value);
        }
    }
    let problem = if request_too_deep {
        Problem::Invalid(
            "request",
            format!("must not nest arrays and objects deeper than {MAX_JSON_DEPTH} levels"),
        )
    } else {
        Problem::TooDeep
    };
    Box::new(Rejection::partial(
        &fields,
        header_id,
        reply_prefixes,
        problem,
    ))
}

impl Rejection {
    /// What can be read of a task whose `problem` keeps it from running.
    fn partial(
        fields: &Map<String, Value>,
        header_id: Option<TaskId>,
        reply_prefixes: &[String],
        problem: Problem,
    ) -> Self {
        let payload_id = fields
            .get("id")
            .and_then(Value::as_str)
            .and_then(|s| s.parse::<TaskId>().ok());
        Self {
            id: payload_id.or(header_id),
            // A refusal is sent only where a task may be answered, never to a `$` subject.
            reply_to: fields
                .get("reply_to")
                .and_then(Value::as_str)
                .filter(|s| is_publish_subject(s) && reply::allowed(s, payload_id, reply_prefixes))
                .map(str::to_owned),
            capability: fields
                .get("capability")
                .and_then(Value::as_str)
                .and_then(|s| s.parse().ok()),
            priority: fields
                .get("priority")
                .and_then(Value::as_str)
                .and_then(|s| s.parse().ok()),
            route: fields
                .get("route")
                .and_then(Value::as_str)
                .map(str::to_owned),
            created_ms: fields.get("created_ms").and_then(Value::as_u64),
            problem,
        }
    }

    fn bare(id: Option<TaskId>, problem: Problem) -> Box<Self> {
        Box::new(Self {
            id,
            reply_to: None,
            capability: None,
            priority: None,
            route: None,
            created_ms: None,
            problem,
        })
    }
}

const UUID_RULE: &str = "must be a UUID string";
const MS_RULE: &str = "must be a whole number of milliseconds since the Unix epoch";

/// Each field of `docs/protocol.md`'s task table, required ones first.
fn check_fields(fields: &Map<String, Value>) -> Result<(), Problem> {
    let id = required(fields, "id")?;
    if id.as_str().and_then(|s| s.parse::<TaskId>().ok()).is_none() {
        return Err(Problem::Invalid("id", UUID_RULE.to_owned()));
    }
    let capability = required(fields, "capability")?;
    match capability.as_str().map(str::parse::<Capability>) {
        Some(Ok(_)) => {}
        Some(Err(e)) => return Err(Problem::Invalid("capability", e.to_string())),
        None => {
            return Err(Problem::Invalid(
                "capability",
                "must be a string".to_owned(),
            ));
        }
    }
    if let Some(priority) = fields.get("priority")
        && priority
            .as_str()
            .and_then(|s| s.parse::<Priority>().ok())
            .is_none()
    {
        return Err(Problem::Invalid(
            "priority",
            "must be one of high, normal, low".to_owned(),
        ));
    }
    match required(fields, "route")?.as_str() {
        None => return Err(Problem::Invalid("route", "must be a string".to_owned())),
        // The route travels in NATS headers and keys: no line breaks, nothing huge.
        Some(route) => check_route(route).map_err(|e| Problem::Invalid("route", e.to_string()))?,
    }
    if !required(fields, "request")?.is_object() {
        return Err(Problem::Invalid(
            "request",
            "must be an object (an OpenAI chat completion body)".to_owned(),
        ));
    }
    for field in ["deadline_ms", "created_ms"] {
        if required(fields, field)?.as_u64().is_none() {
            return Err(Problem::Invalid(field, MS_RULE.to_owned()));
        }
    }
    match fields.get("reply_to") {
        None | Some(Value::Null) => {}
        Some(Value::String(s)) if is_publish_subject(s) => {}
        Some(_) => {
            return Err(Problem::Invalid(
                "reply_to",
                format!(
                    "must be a subject to publish to (no spaces, no wildcards, no empty \
                     tokens, at most {MAX_SUBJECT_LEN} bytes)"
                ),
            ));
        }
    }
    match fields.get("replay_of") {
        None | Some(Value::Null) => {}
        Some(v) if v.as_str().and_then(|s| s.parse::<TaskId>().ok()).is_some() => {}
        Some(_) => return Err(Problem::Invalid("replay_of", UUID_RULE.to_owned())),
    }
    check_step(fields)?;
    check_session(fields)?;
    check_asked_by(fields)
}

/// `session`, if present, names a chat session (its thread `session-<id>` is a subject) and
/// where the turn's own messages start.
fn check_session(fields: &Map<String, Value>) -> Result<(), Problem> {
    let session = match fields.get("session") {
        None | Some(Value::Null) => return Ok(()),
        Some(session) => session,
    };
    let rule = || {
        Problem::Invalid(
            "session",
            "must be {\"id\": <session id>, \"new_from\": <index of the turn's first message>}"
                .to_owned(),
        )
    };
    let id = session["id"].as_str().ok_or_else(rule)?;
    session["new_from"].as_u64().ok_or_else(rule)?;
    match crate::threads::session_thread("session", id) {
        Ok(_) => Ok(()),
        Err(crate::threads::ThreadError::Invalid { problem, .. }) => {
            Err(Problem::Invalid("session", format!("id {problem}")))
        }
        Err(other) => Err(Problem::Invalid("session", other.to_string())),
    }
}

/// Most agents an `asked_by` chain may name (`[tools] ask_max_depth` is at most 16).
const MAX_ASKED_BY: usize = 16;

/// `asked_by`, if present, lists agent names (subject-safe tokens): they travel on as a
/// header of the task's tool calls, where a line break would not be refused but panic.
fn check_asked_by(fields: &Map<String, Value>) -> Result<(), Problem> {
    let valid = match fields.get("asked_by") {
        None | Some(Value::Null) => true,
        Some(Value::Array(chain)) => {
            chain.len() <= MAX_ASKED_BY
                && chain.iter().all(|a| {
                    a.as_str()
                        .is_some_and(|a| a.parse::<crate::Capability>().is_ok())
                })
        }
        Some(_) => false,
    };
    if valid {
        Ok(())
    } else {
        Err(Problem::Invalid(
            "asked_by",
            format!(
                "must list at most {MAX_ASKED_BY} agent names (lowercase letters, digits, - and _)"
            ),
        ))
    }
}

/// Longest workflow step id a task may carry.
const MAX_STEP_LEN: usize = 64;

/// `step`, if present, names a workflow step whose own task this is: the task id must be the
/// one the workflow derives for the step, so no task can pass for another's step.
fn check_step(fields: &Map<String, Value>) -> Result<(), Problem> {
    let rule = || {
        Problem::Invalid(
            "step",
            format!(
                "must be {{\"workflow\": <UUID>, \"step\": <1 to {MAX_STEP_LEN} characters>}} \
                 naming the step whose task id this is"
            ),
        )
    };
    let step = match fields.get("step") {
        None | Some(Value::Null) => return Ok(()),
        Some(step) => step,
    };
    let workflow = step["workflow"]
        .as_str()
        .and_then(|s| s.parse::<TaskId>().ok());
    let name = step["step"]
        .as_str()
        .filter(|s| !s.is_empty() && s.len() <= MAX_STEP_LEN && !s.chars().any(char::is_control));
    let attempt = match step.get("attempt") {
        None | Some(Value::Null) => Some(0),
        Some(n) => n.as_u64().and_then(|n| u32::try_from(n).ok()),
    };
    let id = fields
        .get("id")
        .and_then(Value::as_str)
        .and_then(|s| s.parse::<TaskId>().ok());
    match (workflow, name, attempt, id) {
        (Some(workflow), Some(name), Some(attempt), Some(id))
            if StepRef::task_id_of(workflow, name, attempt) == id =>
        {
            check_write(step)
        }
        _ => Err(rule()),
    }
}

/// A step's `write`, if present: its key and writer are context names (they become
/// subject tokens), its base a revision.
fn check_write(step: &Value) -> Result<(), Problem> {
    let write = match step.get("write") {
        None | Some(Value::Null) => return Ok(()),
        Some(write) => write,
    };
    let name = |field: &str| {
        write[field]
            .as_str()
            .is_some_and(|s| crate::names::check_token(s).is_ok())
    };
    if name("key") && name("by") && write["base"].is_u64() {
        Ok(())
    } else {
        Err(Problem::Invalid(
            "step.write",
            "must be {\"key\": <token>, \"base\": <revision>, \"by\": <token>}".to_owned(),
        ))
    }
}

/// `reply_to` names a subject a reply may go to: an inbox, or the task's own stream.
fn check_reply_to(
    fields: &Map<String, Value>,
    id: Option<TaskId>,
    prefixes: &[String],
) -> Result<(), Problem> {
    match fields.get("reply_to").and_then(Value::as_str) {
        Some(reply_to) if !reply::allowed(reply_to, id, prefixes) => {
            Err(Problem::Invalid("reply_to", reply::rule(prefixes)))
        }
        _ => Ok(()),
    }
}

fn required<'a>(fields: &'a Map<String, Value>, field: &'static str) -> Result<&'a Value, Problem> {
    match fields.get(field) {
        None | Some(Value::Null) => Err(Problem::Missing(field)),
        Some(value) => Ok(value),
    }
}

/// The subject is the queue: a task must say the same capability and priority, or it
/// would run under another capability's limits, or jump (or sink in) the priority order.
fn check_subject(fields: &Map<String, Value>, subject: &str) -> Result<(), Problem> {
    let capability = fields
        .get("capability")
        .and_then(Value::as_str)
        .and_then(|s| s.parse::<Capability>().ok());
    // Absent means the default, as the decoder reads it.
    let priority = match fields.get("priority").and_then(Value::as_str) {
        Some(p) => p.parse::<Priority>().ok(),
        None => Some(Priority::default()),
    };
    let (Some(capability), Some(priority)) = (capability, priority) else {
        // check_fields refused these already.
        return Ok(());
    };
    if subject.split('.').nth(1) != Some(capability.as_str()) {
        return Err(Problem::SubjectMismatch {
            field: "capability",
            value: capability.to_string(),
            subject: subject.to_owned(),
        });
    }
    if subject != task_subject(&capability, priority) {
        return Err(Problem::SubjectMismatch {
            field: "priority",
            value: priority.to_string(),
            subject: subject.to_owned(),
        });
    }
    Ok(())
}

/// Whether `s` can be published to: non-empty tokens, no whitespace, no wildcards, and
/// short enough for nats-server's protocol line ([`MAX_SUBJECT_LEN`]).
pub fn is_publish_subject(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= MAX_SUBJECT_LEN
        && s.split('.').all(|token| {
            !token.is_empty()
                && token != "*"
                && token != ">"
                && !token.chars().any(|c| c.is_whitespace() || c.is_control())
        })
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    const ID: &str = "01935c5e-7b7a-7cc0-9f43-6f7c1a9e1a01";

    fn valid() -> Value {
        json!({
            "id": ID,
            "capability": "chat",
            "priority": "high",
            "route": "fast",
            "request": {"model": "fast", "messages": []},
            "deadline_ms": 10,
            "reply_to": "_INBOX.abc",
            "created_ms": 1
        })
    }

    fn inbox() -> Vec<String> {
        vec!["_INBOX.".to_owned()]
    }

    fn read(subject: &str, task: &Value) -> Result<Task, Box<Rejection>> {
        read_task(subject, task.to_string().as_bytes(), None, &inbox())
    }

    #[test]
    fn a_step_task_must_carry_its_own_steps_id() {
        let workflow = TaskId::new();
        let mut task = valid();
        task["id"] = json!(workflow.child("facts").to_string());
        task["step"] = json!({"workflow": workflow.to_string(), "step": "facts"});
        let read_back = read("tasks.chat.high", &task).unwrap();
        assert_eq!(read_back.step.unwrap().step, "facts");
        // Another step's name, or any other id, is refused.
        task["step"]["step"] = json!("review");
        let problem = read("tasks.chat.high", &task).unwrap_err().problem;
        assert_eq!(problem.field(), Some("step"));
        task["step"] = json!("facts");
        assert_eq!(
            read("tasks.chat.high", &task).unwrap_err().problem.field(),
            Some("step")
        );
    }

    #[test]
    fn a_step_rerun_has_its_own_id_and_a_checked_write() {
        let workflow = TaskId::new();
        let mut task = valid();
        task["id"] = json!(StepRef::task_id_of(workflow, "facts", 2).to_string());
        task["step"] = json!({
            "workflow": workflow.to_string(), "step": "facts", "attempt": 2,
            "write": {"key": "findings", "base": 7, "by": "researcher"}
        });
        let step = read("tasks.chat.high", &task).unwrap().step.unwrap();
        assert_eq!((step.attempt, step.task_id()), (2, task_id_of(&task)));
        assert_eq!(step.write.unwrap().base, 7);
        // The first run's id does not pass for the second run.
        task["step"]["attempt"] = json!(0);
        assert_eq!(
            read("tasks.chat.high", &task).unwrap_err().problem.field(),
            Some("step")
        );
        task["step"]["attempt"] = json!(2);
        // A write key that is not a token (it becomes a subject token) is refused.
        for bad in [json!("a.b"), json!(""), json!(3)] {
            task["step"]["write"]["key"] = bad;
            assert_eq!(
                read("tasks.chat.high", &task).unwrap_err().problem.field(),
                Some("step.write")
            );
        }
    }

    fn task_id_of(task: &Value) -> TaskId {
        task["id"].as_str().unwrap().parse().unwrap()
    }

    #[test]
    fn a_session_turn_names_a_session_that_can_be_a_thread() {
        let mut task = valid();
        task["session"] = json!({"id": "trip-planning", "new_from": 2});
        let read_back = read("tasks.chat.high", &task).unwrap();
        assert_eq!(read_back.session.unwrap().new_from, 2);
        for bad in [
            json!({"id": "a.b", "new_from": 0}),
            json!({"id": "trip", "new_from": -1}),
            json!("trip"),
        ] {
            task["session"] = bad;
            let problem = read("tasks.chat.high", &task).unwrap_err().problem;
            assert_eq!(problem.field(), Some("session"));
        }
    }

    #[test]
    fn a_complete_task_on_its_subject_decodes() {
        let task = read("tasks.chat.high", &valid()).unwrap();
        assert_eq!(task.id.to_string(), ID);
        let mut no_priority = valid();
        no_priority.as_object_mut().unwrap().remove("priority");
        assert!(read("tasks.chat.normal", &no_priority).is_ok());
    }

    #[test]
    fn each_required_field_is_named_when_missing() {
        for field in [
            "id",
            "capability",
            "route",
            "request",
            "deadline_ms",
            "created_ms",
        ] {
            let mut task = valid();
            task.as_object_mut().unwrap().remove(field);
            let rejection = read("tasks.chat.high", &task).unwrap_err();
            assert_eq!(rejection.problem, Problem::Missing(field));
            assert!(rejection.problem.to_string().contains(field));
            // What could be read is kept, so the publisher can be answered.
            assert_eq!(rejection.reply_to.as_deref(), Some("_INBOX.abc"));
            if field != "id" {
                assert_eq!(rejection.id.map(|i| i.to_string()).as_deref(), Some(ID));
            }
        }
    }

    #[test]
    fn each_bad_field_is_named() {
        for (field, bad) in [
            ("id", json!("not-a-uuid")),
            ("id", json!(7)),
            ("capability", json!("chat.>")),
            ("capability", json!(["chat"])),
            ("priority", json!("urgent")),
            ("priority", json!(null)),
            ("route", json!(3)),
            ("request", json!("hello")),
            ("deadline_ms", json!(-1)),
            ("deadline_ms", json!(1.5)),
            ("created_ms", json!("now")),
            ("reply_to", json!("a.*")),
            ("reply_to", json!("has space")),
            ("reply_to", json!(5)),
            ("reply_to", json!(format!("$KV.results.{ID}"))),
            ("reply_to", json!("tasks.chat.low")),
            ("reply_to", json!("events.task.completed")),
            (
                "reply_to",
                json!("stream.01935c5e-7b7a-7cc0-9f43-000000000000"),
            ),
            ("replay_of", json!("x")),
            ("asked_by", json!("planner")),
            ("asked_by", json!(["planner", "a\nb"])),
            ("asked_by", Value::Array(vec![json!("x"); 17])),
        ] {
            let mut task = valid();
            task[field] = bad.clone();
            let rejection = read("tasks.chat.high", &task).unwrap_err();
            assert_eq!(rejection.problem.field(), Some(field), "{field} = {bad}");
        }
    }

    #[test]
    fn a_refusal_never_goes_to_a_subject_a_task_may_not_name() {
        let mut task = valid();
        task["reply_to"] = json!(format!("$KV.results.{ID}"));
        let rejection = read("tasks.chat.high", &task).unwrap_err();
        assert_eq!(rejection.problem.field(), Some("reply_to"));
        assert_eq!(rejection.reply_to, None);
        // A streaming task's own stream subject is a reply subject.
        task["reply_to"] = json!(format!("stream.{ID}"));
        assert!(read("tasks.chat.high", &task).is_ok());
    }

    #[test]
    fn the_id_comes_from_the_header_when_the_payload_has_none() {
        let rejection = read_task("tasks.chat.high", b"not json", Some(ID), &inbox()).unwrap_err();
        assert!(matches!(rejection.problem, Problem::NotJson(_)));
        assert_eq!(rejection.id.map(|i| i.to_string()).as_deref(), Some(ID));
        let rejection = read_task("tasks.chat.high", b"[1]", Some("nope"), &inbox()).unwrap_err();
        assert_eq!(
            (rejection.problem, rejection.id),
            (Problem::NotObject, None)
        );
    }

    #[test]
    fn capability_and_priority_must_be_the_subjects() {
        let rejection = read("tasks.coder.high", &valid()).unwrap_err();
        assert_eq!(rejection.problem.field(), Some("capability"));
        let rejection = read("tasks.chat.low", &valid()).unwrap_err();
        assert_eq!(rejection.problem.field(), Some("priority"));
        let mut no_priority = valid();
        no_priority.as_object_mut().unwrap().remove("priority");
        let rejection = read("tasks.chat.high", &no_priority).unwrap_err();
        assert_eq!(rejection.problem.field(), Some("priority"));
        for subject in ["tasks.chat.high.extra", "tasks.chat", "", "other.chat.high"] {
            assert!(read(subject, &valid()).is_err(), "{subject}");
        }
    }

    #[test]
    fn routes_and_reply_subjects_that_cannot_travel_are_refused() {
        let long_route = format!("simulated/{}", "x".repeat(5000));
        let long_subject = format!("_INBOX.{}", "x".repeat(5000));
        for (field, bad) in [
            ("route", json!("simulated/a\nb")),
            ("route", json!("a\rb")),
            ("route", json!("")),
            ("route", json!(long_route)),
            ("reply_to", json!(long_subject)),
        ] {
            let mut task = valid();
            task[field] = bad;
            let rejection = read("tasks.chat.high", &task).unwrap_err();
            assert_eq!(rejection.problem.field(), Some(field));
            assert_eq!(rejection.id.map(|i| i.to_string()).as_deref(), Some(ID));
        }
    }

    /// A task nesting deeper than the parser goes is still answered: its id and reply_to
    /// are read field by field, and the field that is too deep is named.
    #[test]
    fn too_deep_task_keeps_what_identifies_it() {
        for levels in [MAX_JSON_DEPTH, 126, 127, 10_000] {
            let text = valid().to_string().replacen(
                r#""request":{"#,
                &format!(
                    r#""request":{{"x":{}{},"#,
                    "[".repeat(levels),
                    "]".repeat(levels)
                ),
                1,
            );
            let rejection =
                read_task("tasks.chat.high", text.as_bytes(), None, &inbox()).unwrap_err();
            assert_eq!(rejection.problem.field(), Some("request"), "{levels}");
            assert_eq!(rejection.reply_to.as_deref(), Some("_INBOX.abc"));
            assert_eq!(rejection.id.map(|i| i.to_string()).as_deref(), Some(ID));
        }
        // One level less is the gateway's deepest body: it decodes.
        let text = valid().to_string().replacen(
            r#""request":{"#,
            &format!(
                r#""request":{{"x":{}{},"#,
                "[".repeat(MAX_JSON_DEPTH - 1),
                "]".repeat(MAX_JSON_DEPTH - 1)
            ),
            1,
        );
        assert!(read_task("tasks.chat.high", text.as_bytes(), None, &inbox()).is_ok());
        // Deep elsewhere: refused as a whole, still answerable.
        let mut task = valid();
        task["extra"] = json!(0);
        let text = task.to_string().replacen(
            r#""extra":0"#,
            &format!(r#""extra":{}{}"#, "[".repeat(300), "]".repeat(300)),
            1,
        );
        let rejection = read_task("tasks.chat.high", text.as_bytes(), None, &inbox()).unwrap_err();
        assert_eq!(rejection.problem, Problem::TooDeep);
        assert_eq!(rejection.reply_to.as_deref(), Some("_INBOX.abc"));
        // Deep and broken: only the header's id is left.
        let rejection = read_task(
            "tasks.chat.high",
            "[".repeat(300).as_bytes(),
            Some(ID),
            &inbox(),
        )
        .unwrap_err();
        assert_eq!(rejection.problem, Problem::TooDeep);
        assert_eq!(rejection.id.map(|i| i.to_string()).as_deref(), Some(ID));
    }

    #[test]
    fn no_input_panics() {
        let deep = "[".repeat(10_000);
        let inputs: Vec<&[u8]> = vec![
            b"",
            b"null",
            b"{}",
            b"{\"id\": {}}",
            b"\xff\xfe\x00",
            b"{\"id\": \"01935c5e-7b7a-7cc0-9f43-6f7c1a9e1a01\", \"deadline_ms\": 1e400}",
            b"{\"capability\": \"\\u0000\"}",
            deep.as_bytes(),
        ];
        for input in inputs {
            for subject in ["tasks.chat.high", "", "...", "tasks.\u{e9}.high"] {
                assert!(read_task(subject, input, Some("\u{0}"), &inbox()).is_err());
            }
        }
    }

    /// Property tests: any payload on any subject decodes or is refused, never panics; a
    /// valid task decodes to itself. 256 cases each keeps the suite quick.
    mod properties {
        use proptest::prelude::*;
        use serde_json::{Map, Value, json};

        use super::super::*;
        use super::ID;

        /// JSON without floats: serde_json does not promise to read every float back
        /// bit for bit, and the round trip below compares exactly.
        fn json_value() -> impl Strategy<Value = Value> {
            let leaf = prop_oneof![
                Just(Value::Null),
                any::<bool>().prop_map(Value::Bool),
                any::<i64>().prop_map(Value::from),
                any::<u64>().prop_map(Value::from),
                ".{0,20}".prop_map(Value::String),
            ];
            leaf.prop_recursive(6, 64, 6, |inner| {
                prop_oneof![
                    prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
                    prop::collection::btree_map(".{0,8}", inner, 0..6)
                        .prop_map(|m| Value::Object(m.into_iter().collect())),
                ]
            })
        }

        const FIELDS: [&str; 9] = [
            "id",
            "capability",
            "priority",
            "route",
            "request",
            "deadline_ms",
            "reply_to",
            "created_ms",
            "replay_of",
        ];

        /// Objects with the task's own field names holding anything.
        fn task_like() -> impl Strategy<Value = Value> {
            prop::collection::vec((prop::sample::select(FIELDS.to_vec()), json_value()), 0..10)
                .prop_map(|fields| {
                    Value::Object(fields.into_iter().map(|(k, v)| (k.to_owned(), v)).collect())
                })
        }

        fn subject() -> impl Strategy<Value = String> {
            prop_oneof![
                Just("tasks.chat.normal".to_owned()),
                Just("tasks.chat.high".to_owned()),
                ".{0,30}",
            ]
        }

        fn valid_task() -> impl Strategy<Value = Task> {
            let capability = "[a-z0-9][a-z0-9_-]{0,63}".prop_map(|c| c.parse::<Capability>());
            let priority = prop::sample::select(Priority::ALL.to_vec());
            let route = "[A-Za-z0-9][ -~]{0,200}";
            let request =
                prop::collection::btree_map("[a-z_]{1,12}", json_value(), 0..5).prop_map(|extra| {
                    let mut request: Map<String, Value> = extra.into_iter().collect();
                    request.insert("model".into(), json!("m"));
                    request.insert(
                        "messages".into(),
                        json!([{"role": "user", "content": "hi"}]),
                    );
                    request
                });
            // Valid reply subjects are inboxes (`queue.reply_prefixes`, here `_INBOX.`).
            let reply_to =
                prop::option::of("_INBOX\\.[A-Za-z0-9_]{1,10}(\\.[A-Za-z0-9_]{1,10}){0,4}");
            (
                (any::<u128>(), capability, priority, route),
                (request, any::<u64>(), reply_to, any::<u64>()),
                prop::option::of(any::<u128>()),
            )
                .prop_filter_map(
                    "capability",
                    |(
                        (id, capability, priority, route),
                        (request, deadline_ms, reply_to, created_ms),
                        replay_of,
                    )| {
                        let task_id =
                            |n: u128| uuid::Uuid::from_u128(n).to_string().parse::<TaskId>().ok();
                        Some(Task {
                            id: task_id(id)?,
                            capability: capability.ok()?,
                            priority,
                            route,
                            request,
                            deadline_ms,
                            reply_to,
                            created_ms,
                            replay_of: match replay_of {
                                Some(n) => Some(task_id(n)?),
                                None => None,
                            },
                            step: None,
                            asked_by: Vec::new(),
                            session: None,
                        })
                    },
                )
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(256))]

            #[test]
            fn arbitrary_bytes(
                subject in subject(),
                bytes in prop::collection::vec(any::<u8>(), 0..512),
                msg_id in prop::option::of(".{0,40}"),
            ) {
                let _ = read_task(&subject, &bytes, msg_id.as_deref(), &super::inbox());
            }

            #[test]
            fn arbitrary_json(subject in subject(), value in json_value()) {
                let _ = read_task(&subject, value.to_string().as_bytes(), None, &super::inbox());
            }

            #[test]
            fn arbitrary_task_fields(subject in subject(), value in task_like()) {
                if let Err(rejection) = read_task(&subject, value.to_string().as_bytes(), None, &super::inbox()) {
                    // Whatever could be read is only ever what the rules allow.
                    if let Some(reply_to) = &rejection.reply_to {
                        prop_assert!(is_publish_subject(reply_to));
                    }
                }
            }

            #[test]
            fn arbitrary_nesting(open in "[\\[{]{0,400}", inner in ".{0,10}") {
                let payload = format!("{{\"id\":\"{ID}\",\"reply_to\":\"_INBOX.a\",\"request\":{open}{inner}");
                let _ = read_task("tasks.chat.normal", payload.as_bytes(), None, &super::inbox());
            }

            /// What the decoder accepts can travel: the route in headers and keys, the reply
            /// subject on nats-server's protocol line.
            #[test]
            fn accepted_tasks_are_safe_to_send_on(
                mut task in valid_task(),
                route in prop_oneof![".{1,20}", "[a-z/\\x00-\\x1f]{1,10}", "r{250,300}"],
                reply_to in prop::option::of(prop_oneof![".{1,20}", "s{250,300}"]),
            ) {
                task.route = route;
                task.reply_to = reply_to;
                let subject = task_subject(&task.capability, task.priority);
                if let Ok(task) = read_task(&subject, &serde_json::to_vec(&task).unwrap(), None, &super::inbox()) {
                    prop_assert!(crate::limits::check_route(&task.route).is_ok(), "{:?}", task.route);
                    if let Some(reply_to) = &task.reply_to {
                        prop_assert!(reply_to.len() <= crate::limits::MAX_SUBJECT_LEN);
                    }
                }
            }

            #[test]
            fn valid_tasks_round_trip(task in valid_task()) {
                let subject = task_subject(&task.capability, task.priority);
                let bytes = serde_json::to_vec(&task).unwrap();
                let id = task.id.to_string();
                let read = read_task(&subject, &bytes, Some(&id), &super::inbox());
                prop_assert_eq!(read.as_ref().map_err(|r| &r.problem), Ok(&task));
            }
        }
    }
}
