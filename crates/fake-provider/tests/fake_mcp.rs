//! The fake MCP server as its own process, through an MCP client: it lists its tools and
//! answers them (the end-to-end tests configure it as a stdio server of the tools service).

use rmcp::ServiceExt;
use rmcp::model::CallToolRequestParams;
use rmcp::transport::TokioChildProcess;
use serde_json::json;

#[tokio::test]
async fn the_fake_mcp_server_lists_and_answers_its_tools() {
    let cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_switchyard-fake-mcp"));
    let (transport, _) = TokioChildProcess::builder(cmd).spawn().unwrap();
    let client = ().serve(transport).await.unwrap();
    let mut names: Vec<String> = client
        .list_all_tools()
        .await
        .unwrap()
        .into_iter()
        .map(|t| t.name.to_string())
        .collect();
    names.sort();
    assert_eq!(
        names,
        ["add", "crash", "echo", "env", "fail", "grow", "slow"]
    );
    let args = json!({"a": 1, "b": 2}).as_object().cloned().unwrap();
    let sum = client
        .call_tool(CallToolRequestParams::new("add").with_arguments(args))
        .await
        .unwrap();
    assert_eq!(sum.structured_content, Some(json!({"sum": 3.0})));
    let args = json!({"message": "broken"}).as_object().cloned().unwrap();
    let failed = client
        .call_tool(CallToolRequestParams::new("fail").with_arguments(args))
        .await
        .unwrap();
    assert_eq!(failed.is_error, Some(true));
    client.cancel().await.unwrap();
}
