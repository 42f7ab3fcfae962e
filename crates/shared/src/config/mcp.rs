//! `[mcp.<server>]`: the MCP servers whose tools `switchyard tools` serves beside the built-in
//! ones. A server is a command to start (stdio: `command`, `args`, `env`) or a URL
//! (streamable HTTP: `url`, optionally `bearer_env`, the variable holding its key). An `env`
//! value of the form `${NAME}` is read from Switchyard's environment when the configuration
//! loads; every value is held as a [`Secret`] and never logged. A started server gets only
//! those variables and a few harmless ones of Switchyard's own (`PATH`, `HOME`, …), never
//! its provider keys. See `docs/tools.md` ("MCP").

use std::collections::{BTreeMap, HashMap};

use serde::Deserialize;

use super::{Problems, Secret};

/// Variables of Switchyard's environment a started server inherits: what a program needs to
/// find its tools, home and locale; nothing that could hold a key.
pub const INHERITED_ENV: &[&str] = &[
    "PATH", "HOME", "USER", "LOGNAME", "SHELL", "TERM", "LANG", "LC_ALL", "TMPDIR",
];
/// Most arguments and environment variables one server may be given.
const MAX_ENTRIES: usize = 64;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct McpServerConfig {
    /// Program to start (stdio transport), found on `PATH` unless a path.
    #[serde(default)]
    pub command: Option<String>,
    #[serde(default)]
    pub args: Vec<String>,
    /// Variables for the started server; a value `${NAME}` is Switchyard's variable `NAME`.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// Streamable HTTP endpoint (`http://…` or `https://…`).
    #[serde(default)]
    pub url: Option<String>,
    /// Variable holding the key sent as `Authorization: Bearer <key>` (HTTP servers only).
    #[serde(default)]
    pub bearer_env: Option<String>,
    /// The resolved environment of a started server (inherited and configured).
    #[serde(skip)]
    pub resolved_env: BTreeMap<String, Secret>,
    /// The resolved bearer key.
    #[serde(skip)]
    pub bearer: Option<Secret>,
}

impl McpServerConfig {
    /// Resolves `env` and `bearer_env` from `env_vars`; returns the `(key, variable)` pairs
    /// that name an unset variable.
    pub(crate) fn resolve(
        &mut self,
        name: &str,
        env_vars: &HashMap<String, String>,
    ) -> Vec<(String, String)> {
        let mut missing = Vec::new();
        let mut resolved = BTreeMap::new();
        for var in INHERITED_ENV {
            if let Some(value) = env_vars.get(*var) {
                resolved.insert((*var).to_owned(), Secret(value.clone()));
            }
        }
        for (key, value) in &self.env {
            let value = match reference(value) {
                Some(var) => match env_vars.get(var) {
                    Some(v) => v.clone(),
                    None => {
                        missing.push((format!("mcp.{name}.env.{key}"), var.to_owned()));
                        continue;
                    }
                },
                None => value.clone(),
            };
            resolved.insert(key.clone(), Secret(value));
        }
        self.resolved_env = resolved;
        if let Some(var) = &self.bearer_env {
            match env_vars.get(var).filter(|v| !v.trim().is_empty()) {
                Some(v) => self.bearer = Some(Secret::new(v.clone())),
                None => missing.push((format!("mcp.{name}.bearer_env"), var.clone())),
            }
        }
        missing
    }
}

/// `NAME` of a value `${NAME}`.
fn reference(value: &str) -> Option<&str> {
    value.strip_prefix("${")?.strip_suffix('}')
}

pub(crate) fn validate(p: &mut Problems, servers: &BTreeMap<String, McpServerConfig>) {
    for (name, server) in servers {
        let key = format!("mcp.{name}");
        if let Err(problem) = crate::mcp::check_server_name(name) {
            p.add(&key, format!("server name {problem}"));
        }
        match (&server.command, &server.url) {
            (Some(_), Some(_)) => p.add(
                &key,
                "give either `command` (stdio) or `url` (streamable HTTP), not both",
            ),
            (None, None) => p.add(&key, "needs `command` (stdio) or `url` (streamable HTTP)"),
            (Some(command), None) => {
                if command.trim().is_empty() {
                    p.add(&format!("{key}.command"), "must not be empty");
                }
                if server.bearer_env.is_some() {
                    p.add(&format!("{key}.bearer_env"), "is for `url` servers only");
                }
            }
            (None, Some(url)) => {
                if !(url.starts_with("http://") || url.starts_with("https://")) || url.len() < 10 {
                    p.add(
                        &format!("{key}.url"),
                        format!("{url:?} is not an http:// or https:// URL"),
                    );
                }
                if !server.args.is_empty() || !server.env.is_empty() {
                    p.add(&key, "`args` and `env` are for `command` servers only");
                }
            }
        }
        if server.args.len() > MAX_ENTRIES || server.env.len() > MAX_ENTRIES {
            p.add(
                &key,
                format!("at most {MAX_ENTRIES} args and {MAX_ENTRIES} env entries"),
            );
        }
        for var in server.env.keys() {
            let fine = !var.is_empty()
                && !var.starts_with(|c: char| c.is_ascii_digit())
                && var.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
            if !fine {
                p.add(
                    &format!("{key}.env"),
                    format!("{var:?} is not a variable name"),
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn problems(toml: &str) -> Vec<String> {
        #[derive(Deserialize)]
        struct Doc {
            mcp: BTreeMap<String, McpServerConfig>,
        }
        let doc: Doc = toml::from_str(toml).unwrap();
        let mut p = Problems::default();
        validate(&mut p, &doc.mcp);
        p.0.into_iter().map(|c| c.key).collect()
    }

    #[test]
    fn servers_are_checked_with_every_problem_named() {
        assert!(
            problems("[mcp.files]\ncommand = \"srv\"\nargs = [\"-v\"]\nenv = { A_1 = \"x\" }\n")
                .is_empty()
        );
        assert_eq!(problems("[mcp.Files]\ncommand = \"srv\"\n"), ["mcp.Files"]);
        assert_eq!(problems("[mcp.a__b]\ncommand = \"srv\"\n"), ["mcp.a__b"]);
        assert_eq!(problems("[mcp.none]\n"), ["mcp.none"]);
        assert_eq!(
            problems("[mcp.both]\ncommand = \"srv\"\nurl = \"http://x\"\n"),
            ["mcp.both"]
        );
        assert_eq!(
            problems("[mcp.e]\ncommand = \" \"\nenv = { \"1X\" = \"y\" }\n"),
            ["mcp.e.command", "mcp.e.env"]
        );
        assert!(
            problems("[mcp.w]\nurl = \"https://mcp.example.com/mcp\"\nbearer_env = \"K\"\n")
                .is_empty()
        );
        assert_eq!(
            problems("[mcp.w]\nurl = \"ftp://example.com\"\n"),
            ["mcp.w.url"]
        );
        assert_eq!(
            problems("[mcp.w]\nurl = \"http://example.com\"\nargs = [\"x\"]\n"),
            ["mcp.w"]
        );
        assert_eq!(
            problems("[mcp.b]\ncommand = \"srv\"\nbearer_env = \"K\"\n"),
            ["mcp.b.bearer_env"]
        );
    }

    #[test]
    fn loaded_configurations_resolve_servers_and_check_what_names_their_tools() {
        use crate::config::{Config, DEFAULT_TOML, Source};
        let toml = format!(
            "{DEFAULT_TOML}\n[mcp.files]\ncommand = \"srv\"\nenv = {{ T = \"${{TOKEN}}\" }}\n\n[agents.reader]\nrole = \"R\"\ncapabilities = [\"reading\"]\nroute = \"simulated\"\nsystem_prompt = \"p\"\ntools = [\"mcp.files.read\", \"mcp.web.get\"]\n"
        );
        let vars = |pairs: &[(&str, &str)]| -> HashMap<String, String> {
            pairs
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect()
        };
        let err = Config::load(Source::Toml(&toml), &vars(&[])).unwrap_err();
        let keys: Vec<&str> = err.problems.iter().map(|p| p.key.as_str()).collect();
        assert_eq!(keys, ["mcp.files.env.T", "agents.reader.tools[1]"], "{err}");
        let toml = toml.replace(", \"mcp.web.get\"", "");
        let cfg = Config::load(
            Source::Toml(&toml),
            &vars(&[
                ("TOKEN", "t0k"),
                ("SWITCHYARD__TOOLS__CHAT_ALLOWED", "mcp.files.read"),
            ]),
        )
        .unwrap();
        assert_eq!(cfg.mcp["files"].resolved_env["T"].expose(), "t0k");
        assert!(cfg.tools.chat_may_use("mcp.files.read"));
        let err = Config::load(
            Source::Toml(&toml),
            &vars(&[
                ("TOKEN", "t"),
                ("SWITCHYARD__TOOLS__CHAT_ALLOWED", "mcp.web.get"),
            ]),
        )
        .unwrap_err();
        assert_eq!(err.problems[0].key, "tools.chat_allowed[0]");
    }

    #[test]
    fn references_are_resolved_and_missing_ones_named() {
        let mut server = McpServerConfig {
            command: Some("srv".into()),
            args: vec![],
            env: BTreeMap::from([
                ("TOKEN".into(), "${GH_TOKEN}".into()),
                ("MODE".into(), "fast".into()),
                ("OTHER".into(), "${UNSET}".into()),
            ]),
            url: None,
            bearer_env: None,
            resolved_env: BTreeMap::new(),
            bearer: None,
        };
        let vars = HashMap::from([
            ("GH_TOKEN".to_owned(), "s3cret".to_owned()),
            ("PATH".to_owned(), "/bin".to_owned()),
            ("OPENAI_API_KEY".to_owned(), "sk-never".to_owned()),
        ]);
        let missing = server.resolve("gh", &vars);
        assert_eq!(
            missing,
            vec![("mcp.gh.env.OTHER".to_owned(), "UNSET".to_owned())]
        );
        assert_eq!(server.resolved_env["TOKEN"].expose(), "s3cret");
        assert_eq!(server.resolved_env["MODE"].expose(), "fast");
        assert_eq!(server.resolved_env["PATH"].expose(), "/bin");
        assert!(!server.resolved_env.contains_key("OPENAI_API_KEY"));
        assert!(!format!("{server:?}").contains("s3cret"));
    }
}
