//! `nexus watch`: the API's change stream (Server-Sent Events) printed as it arrives,
//! reconnecting with `Last-Event-ID` when the connection drops, so no event is missed (or the
//! server says `resync` when it no longer holds the gap).
//!
//! [`SseParser`] is the I/O-free part: bytes in, events out.

use std::process::ExitCode;
use std::time::Duration;

use serde_json::{Value, json};

use crate::cli::{ClientArgs, Output};
use crate::client::{Api, CallError, with_query};

/// One Server-Sent Event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SseEvent {
    /// The last event id the stream set (it carries over to events without an `id:` line).
    pub id: Option<String>,
    /// `event:` (default `message`).
    pub event: String,
    /// `data:` lines joined with `\n`.
    pub data: String,
}

/// Incremental parser of `text/event-stream` (the WHATWG rules: LF, CR or CRLF line ends,
/// `:` comments, multi-line data, `id` persisting across events, `retry`).
#[derive(Debug, Default)]
pub struct SseParser {
    line: Vec<u8>,
    /// The previous byte was a CR: a LF right after it ends the same line.
    after_cr: bool,
    event: String,
    data: String,
    has_data: bool,
    last_id: Option<String>,
    retry: Option<Duration>,
}

impl SseParser {
    /// Feeds bytes; returns the events they complete.
    pub fn push(&mut self, bytes: &[u8]) -> Vec<SseEvent> {
        let mut out = Vec::new();
        for &b in bytes {
            if std::mem::take(&mut self.after_cr) && b == b'\n' {
                continue;
            }
            match b {
                b'\r' | b'\n' => {
                    self.after_cr = b == b'\r';
                    let line = std::mem::take(&mut self.line);
                    self.line(&String::from_utf8_lossy(&line), &mut out);
                }
                _ => self.line.push(b),
            }
        }
        out
    }

    /// The reconnection delay the server asked for, if it did.
    pub fn retry(&self) -> Option<Duration> {
        self.retry
    }

    fn line(&mut self, line: &str, out: &mut Vec<SseEvent>) {
        if line.is_empty() {
            let event = std::mem::take(&mut self.event);
            if std::mem::take(&mut self.has_data) {
                let mut data = std::mem::take(&mut self.data);
                data.pop(); // the last data line's '\n'
                out.push(SseEvent {
                    id: self.last_id.clone(),
                    event: if event.is_empty() {
                        "message".into()
                    } else {
                        event
                    },
                    data,
                });
            }
            return;
        }
        if line.starts_with(':') {
            return; // a comment: keep-alives
        }
        let (field, value) = match line.split_once(':') {
            Some((field, value)) => (field, value.strip_prefix(' ').unwrap_or(value)),
            None => (line, ""),
        };
        match field {
            "event" => self.event = value.to_string(),
            "data" => {
                self.data.push_str(value);
                self.data.push('\n');
                self.has_data = true;
            }
            "id" if !value.contains('\0') => self.last_id = Some(value.to_string()),
            "retry" => {
                if let Ok(ms) = value.parse::<u64>() {
                    self.retry = Some(Duration::from_millis(ms));
                }
            }
            _ => {}
        }
    }
}

/// Options of `nexus watch`.
#[derive(Debug, Default)]
pub struct WatchOptions {
    /// Kinds to watch (`nodes,routes,…`); all when empty.
    pub kinds: Vec<String>,
    /// Resume after this event.
    pub last_event_id: Option<String>,
    /// Stop after this many events.
    pub count: Option<u64>,
}

/// A connection that has said nothing for this long is dead (keep-alives come every 15 s).
const IDLE: Duration = Duration::from_secs(45);
const MAX_DELAY: Duration = Duration::from_secs(10);

/// `nexus watch`.
pub async fn watch(args: &ClientArgs, options: WatchOptions) -> anyhow::Result<ExitCode> {
    let api = Api::streaming(args, IDLE)?;
    let kinds = options
        .kinds
        .iter()
        .map(|k| k.trim())
        .filter(|k| !k.is_empty())
        .collect::<Vec<_>>()
        .join(",");
    let path = with_query(
        "/v1/watch",
        &[("kinds", Some(kinds.as_str()).filter(|k| !k.is_empty()))],
    );
    let mut last_id = options.last_event_id;
    let mut printed: u64 = 0;
    let mut connected = false;
    let mut delay = Duration::from_millis(500);
    loop {
        let mut headers = vec![("accept", "text/event-stream".to_string())];
        if let Some(id) = &last_id {
            headers.push(("last-event-id", id.clone()));
        }
        match api
            .send(reqwest::Method::GET, &path, None::<&()>, &headers)
            .await
        {
            Ok(mut response) => {
                let content_type = response
                    .headers()
                    .get(reqwest::header::CONTENT_TYPE)
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("")
                    .to_string();
                if !content_type.starts_with("text/event-stream") {
                    anyhow::bail!(
                        "{}{path} answered {content_type:?} instead of an event stream (text/event-stream)",
                        api.base
                    );
                }
                // Standard error, so it never mixes with the events on standard output.
                if connected {
                    eprintln!("watch: reconnected to {}", api.base);
                } else {
                    eprintln!(
                        "watching {}{} (Ctrl-C stops)",
                        api.base,
                        if kinds.is_empty() {
                            String::new()
                        } else {
                            format!(" for {kinds}")
                        }
                    );
                }
                connected = true;
                delay = Duration::from_millis(500);
                let mut parser = SseParser::default();
                let why = loop {
                    match response.chunk().await {
                        Ok(Some(bytes)) => {
                            for event in parser.push(&bytes) {
                                if event.id.is_some() {
                                    last_id.clone_from(&event.id);
                                }
                                print_event(args.output, &event)?;
                                printed += 1;
                                if options.count.is_some_and(|n| printed >= n) {
                                    return Ok(ExitCode::SUCCESS);
                                }
                            }
                        }
                        Ok(None) => break "the node ended the stream".to_string(),
                        Err(err) => break format!("the stream broke off ({err})"),
                    }
                };
                if let Some(retry) = parser.retry() {
                    delay = retry.min(MAX_DELAY);
                }
                eprintln!(
                    "watch: {why}; reconnecting in {delay:?}{}",
                    last_id
                        .as_deref()
                        .map(|id| format!(" to resume after event {id}"))
                        .unwrap_or_default()
                );
            }
            // Once connected, a node that restarts or is briefly unreachable is waited for.
            Err(CallError::Unreachable(err)) if connected => {
                eprintln!(
                    "watch: {}; retrying in {delay:?}",
                    api.explain(CallError::Unreachable(err))
                );
            }
            Err(CallError::Status {
                status: status @ (429 | 502 | 503 | 504),
                code,
                message,
                retry_after,
            }) if connected => {
                if let Some(secs) = retry_after.and_then(|s| s.parse::<u64>().ok()) {
                    delay = Duration::from_secs(secs).min(MAX_DELAY * 6);
                }
                eprintln!("watch: {code} ({status}): {message}; retrying in {delay:?}");
            }
            Err(err) => return Err(api.explain(err)),
        }
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(MAX_DELAY);
    }
}

fn print_event(output: Output, event: &SseEvent) -> anyhow::Result<()> {
    let data: Value =
        serde_json::from_str(&event.data).unwrap_or_else(|_| Value::String(event.data.clone()));
    match output {
        Output::Table => {
            let id = event.id.as_deref().unwrap_or("-");
            let field = |name: &str| match data.get(name) {
                Some(Value::String(s)) if !s.is_empty() => s.clone(),
                Some(Value::Null) | None => "-".into(),
                Some(other) => other.to_string(),
            };
            if event.event == "resync" {
                println!(
                    "{id}  resync  {} (events were missed: list again to catch up)",
                    field("reason")
                );
            } else if data.is_object() {
                println!(
                    "{id}  {:<14}  {:<7}  {}  tenant={}",
                    event.event,
                    field("op"),
                    field("id"),
                    field("tenant")
                );
            } else {
                println!("{id}  {}  {}", event.event, event.data);
            }
        }
        Output::Json => {
            let line = json!({"event_id": event.id, "event": event.event, "data": data});
            println!("{}", serde_json::to_string(&line)?);
        }
        Output::Yaml => {
            let doc = json!({"event_id": event.id, "event": event.event, "data": data});
            print!("---\n{}", serde_norway::to_string(&doc)?);
        }
        Output::Csv => anyhow::bail!("-o csv is only for `nexus tenants usage`"),
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn feed(parser: &mut SseParser, chunks: &[&str]) -> Vec<SseEvent> {
        chunks
            .iter()
            .flat_map(|c| parser.push(c.as_bytes()))
            .collect()
    }

    #[test]
    fn events_split_anywhere_parse_the_same() {
        let stream = ": keep-alive\n\nid: 1-1\nevent: routes\ndata: {\"op\":\"upsert\"}\n\nid: 1-2\r\nevent: nodes\r\ndata: a\r\ndata: b\r\n\r\nevent: resync\rdata: {\"reason\":\"old\"}\r\rretry: 2500\n";
        let want = vec![
            SseEvent {
                id: Some("1-1".into()),
                event: "routes".into(),
                data: "{\"op\":\"upsert\"}".into(),
            },
            SseEvent {
                id: Some("1-2".into()),
                event: "nodes".into(),
                data: "a\nb".into(),
            },
            SseEvent {
                // No id line: the last one carries over.
                id: Some("1-2".into()),
                event: "resync".into(),
                data: "{\"reason\":\"old\"}".into(),
            },
        ];
        let mut whole = SseParser::default();
        assert_eq!(feed(&mut whole, &[stream]), want);
        assert_eq!(whole.retry(), Some(Duration::from_millis(2500)));
        // Byte by byte, CRLF split between chunks included.
        let mut bytes = SseParser::default();
        let chunks: Vec<String> = stream.chars().map(String::from).collect();
        let chunks: Vec<&str> = chunks.iter().map(String::as_str).collect();
        assert_eq!(feed(&mut bytes, &chunks), want);
    }

    #[test]
    fn events_without_data_are_not_dispatched() {
        let mut parser = SseParser::default();
        assert!(feed(&mut parser, &["event: x\nid: 7\n\n"]).is_empty());
        let events = feed(&mut parser, &["data\n\n"]);
        assert_eq!(
            events,
            vec![SseEvent {
                id: Some("7".into()),
                event: "message".into(),
                data: String::new()
            }]
        );
    }
}
