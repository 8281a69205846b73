//! `shequ-chat admin …`: the server API from the operator's shell on the board, so that an admin
//! with SSH needs no curl. It reads the API's address and key from the same configuration file
//! as the server, sends one request, and prints the answer as lines for people.
//!
//! A plain blocking HTTP/1.1 client on `std::net`: one request, `Connection: close`, bounded by
//! [`ADMIN_TIMEOUT`].

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use serde_json::{Value, json};

use crate::config::Config;
use crate::http::utc_time;

/// How long the command waits for the server, to connect and to answer.
pub const ADMIN_TIMEOUT: Duration = Duration::from_secs(10);

/// Its part of the usage text.
pub const USAGE: &str = "\
  shequ-chat admin --config PATH COMMAND    use the server API of a running server:
      who [CHANNEL]                           users online, with their connections
      publish [CHANNEL] TEXT                  post TEXT as the site
      kick USER [--reason TEXT]               close the user's connections (4008)
      ban USER [--for DURATION] [--reason TEXT]
                                              close and refuse the user (for good without --for)
      unban USER | bans                       lift a ban | list bans
      mute USER --for DURATION [--channel C] [--reason TEXT]
      unmute USER [--channel C] | mutes       lift a mute | list mutes
      delete ID                               delete a message from history
      info                                    counts, uptime, version
    DURATION: 90s, 10m, 1h, 2d or 1w
";

/// One request of the API, built from the command line.
#[derive(Debug, PartialEq, Eq)]
pub struct Request {
    pub method: &'static str,
    pub path: String,
    pub body: Option<Value>,
}

/// Parses `admin`'s arguments (after `--config PATH` is taken out) into a request.
pub fn parse(args: &[String]) -> Result<Request, String> {
    let mut positional = Vec::new();
    let mut flags: Vec<(&str, &str)> = Vec::new();
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        match arg.as_str() {
            flag @ ("--for" | "--reason" | "--channel") => {
                let value = it.next().ok_or(format!("{flag} needs a value"))?;
                flags.push((flag, value));
            }
            other if other.starts_with("--") => return Err(format!("unknown option {other}")),
            other => positional.push(other),
        }
    }
    let flag = |name: &str| flags.iter().find(|(f, _)| *f == name).map(|(_, v)| v.to_string());
    let for_secs = flag("--for").map(|d| parse_duration(&d)).transpose()?;
    let (reason, channel) = (flag("--reason"), flag("--channel"));
    let enc = percent_encode;
    let request = |method, path: String, body| Ok(Request { method, path, body });
    match positional.as_slice() {
        ["who"] => request("GET", "/api/presence".into(), None),
        ["who", channel] => request("GET", format!("/api/presence?channel={}", enc(channel)), None),
        ["publish", text] => request("POST", "/api/publish".into(), Some(json!({"content": text}))),
        ["publish", channel, text] => request(
            "POST",
            "/api/publish".into(),
            Some(json!({"channel": channel, "content": text})),
        ),
        ["kick", user] => request(
            "POST",
            "/api/disconnect".into(),
            Some(json!({"user_id": user, "reason": reason})),
        ),
        ["ban", user] => request(
            "POST",
            "/api/ban".into(),
            Some(json!({"user_id": user, "for_secs": for_secs, "reason": reason})),
        ),
        ["unban", user] => request("DELETE", format!("/api/ban/{}", enc(user)), None),
        ["bans"] => request("GET", "/api/bans".into(), None),
        ["mute", user] => {
            let for_secs = for_secs.ok_or("mute needs --for DURATION")?;
            let body = json!({"user_id": user, "for_secs": for_secs, "channel": channel,
                              "reason": reason});
            request("POST", "/api/mute".into(), Some(body))
        }
        ["unmute", user] => {
            let query = channel.map_or(String::new(), |c| format!("?channel={}", enc(&c)));
            request("DELETE", format!("/api/mute/{}{query}", enc(user)), None)
        }
        ["mutes"] => request("GET", "/api/mutes".into(), None),
        ["delete", id] => request("DELETE", format!("/api/messages/{}", enc(id)), None),
        ["info"] => request("GET", "/api/info".into(), None),
        [] => Err("admin needs a command".into()),
        [command, ..] => Err(format!("admin: unknown command or wrong arguments: {command}")),
    }
}

/// `90s`, `10m`, `1h`, `2d`, `1w`, or plain seconds.
pub fn parse_duration(text: &str) -> Result<u64, String> {
    let bad = || format!("{text:?} is not a duration (like 90s, 10m, 1h, 2d or 1w)");
    let (number, unit) =
        text.split_at(text.find(|c: char| !c.is_ascii_digit()).unwrap_or(text.len()));
    let n: u64 = number.parse().map_err(|_| bad())?;
    let scale = match unit {
        "" | "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        "w" => 7 * 86_400,
        _ => return Err(bad()),
    };
    n.checked_mul(scale).filter(|secs| *secs > 0).ok_or_else(bad)
}

fn percent_encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for b in text.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~:".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Sends the request to the server the configuration describes and returns the lines to print;
/// an error is the server's one-line reason (or why it could not be reached).
pub fn run(config: &Config, request: &Request) -> Result<Vec<String>, String> {
    let api = config.api.as_ref().ok_or("the configuration has no api section")?;
    let mut addr: SocketAddr =
        api.listen.parse().map_err(|e| format!("api.listen {:?}: {e}", api.listen))?;
    if addr.port() == 0 {
        return Err("api.listen has port 0: the command cannot know the port".into());
    }
    if addr.ip().is_unspecified() {
        addr.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
    }
    let (status, body) = send(addr, api.key.as_ref().map(|k| k.expose()), request)
        .map_err(|e| format!("cannot reach the server API at {addr}: {e}"))?;
    let value: Value = serde_json::from_str(&body).unwrap_or(Value::Null);
    if status != 200 {
        let reason = value["error"].as_str().unwrap_or(body.trim());
        return Err(format!("{status}: {reason}"));
    }
    Ok(describe(request, &value))
}

fn send(addr: SocketAddr, key: Option<&str>, request: &Request) -> std::io::Result<(u16, String)> {
    let mut stream = TcpStream::connect_timeout(&addr, ADMIN_TIMEOUT)?;
    stream.set_read_timeout(Some(ADMIN_TIMEOUT))?;
    stream.set_write_timeout(Some(ADMIN_TIMEOUT))?;
    let body = request.body.as_ref().map(Value::to_string).unwrap_or_default();
    let auth = key.map_or(String::new(), |k| format!("Authorization: Bearer {k}\r\n"));
    let head = format!(
        "{} {} HTTP/1.1\r\nHost: {addr}\r\n{auth}Content-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n",
        request.method,
        request.path,
        body.len()
    );
    stream.write_all(head.as_bytes())?;
    stream.write_all(body.as_bytes())?;
    let mut response = Vec::new();
    stream.read_to_end(&mut response)?;
    let text = String::from_utf8_lossy(&response);
    let bad = || std::io::Error::other("not an HTTP response");
    let status = text.get(9..12).and_then(|s| s.parse().ok()).ok_or_else(bad)?;
    let body = text.split_once("\r\n\r\n").map_or("", |(_, b)| b).to_string();
    Ok((status, body))
}

/// The answer as lines for people.
fn describe(request: &Request, v: &Value) -> Vec<String> {
    let until =
        |v: &Value| v.as_u64().map_or("for good".to_string(), |t| format!("until {}", utc_time(t)));
    let s = |v: &Value| v.as_str().unwrap_or("").to_string();
    let reason = |v: &Value| v.as_str().map_or(String::new(), |r| format!(" ({r})"));
    let path = request.path.as_str();
    if path.starts_with("/api/presence") {
        let users = v["users"].as_array().cloned().unwrap_or_default();
        let mut lines: Vec<String> = users
            .iter()
            .map(|u| {
                let n = u["connections"].as_u64().unwrap_or(0);
                format!("{} ({}): {n} connection{}", s(&u["username"]), s(&u["user_id"]), plural(n))
            })
            .collect();
        let place = v["channel"].as_str().map_or(String::new(), |c| format!(" in {c}"));
        lines.push(format!("{} online{place}", users.len()));
        lines
    } else if path == "/api/publish" {
        vec![format!("published message {}", v["id"])]
    } else if path == "/api/disconnect" {
        let n = v["closed"].as_u64().unwrap_or(0);
        vec![format!("disconnected {}: {n} connection{} closed", s(&v["user_id"]), plural(n))]
    } else if path == "/api/ban" {
        let n = v["closed"].as_u64().unwrap_or(0);
        vec![format!(
            "banned {} {}{}: {n} connection{} closed",
            s(&v["user_id"]),
            until(&v["until"]),
            reason(&v["reason"]),
            plural(n)
        )]
    } else if path == "/api/mute" {
        let place = v["channel"].as_str().map_or(" everywhere".into(), |c| format!(" in {c}"));
        vec![format!("muted {}{place} {}", s(&v["user_id"]), until(&v["until"]))]
    } else if path == "/api/bans" || path == "/api/mutes" {
        let list = v["bans"].as_array().or(v["mutes"].as_array()).cloned().unwrap_or_default();
        let mut lines: Vec<String> = list
            .iter()
            .map(|e| {
                let place = e["channel"].as_str().map_or(String::new(), |c| format!(" in {c}"));
                format!(
                    "{}{place} {}{}",
                    s(&e["user_id"]),
                    until(&e["until"]),
                    reason(&e["reason"])
                )
            })
            .collect();
        lines.push(format!("{} in force", list.len()));
        lines
    } else if path.starts_with("/api/ban/") {
        vec![format!("unbanned {}", s(&v["user_id"]))]
    } else if path.starts_with("/api/mute/") {
        vec![format!("unmuted {}", s(&v["user_id"]))]
    } else if path.starts_with("/api/messages/") {
        vec![format!("deleted message {}", v["id"])]
    } else {
        v.as_object()
            .map(|o| o.iter().map(|(k, v)| format!("{k}: {v}")).collect())
            .unwrap_or_default()
    }
}

fn plural(n: u64) -> &'static str {
    if n == 1 { "" } else { "s" }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(text: &str) -> Vec<String> {
        text.split(' ').map(String::from).collect()
    }

    #[test]
    fn commands_become_requests() {
        let ban = parse(&args("ban 42 --for 1h --reason spam")).unwrap();
        assert_eq!(ban.path, "/api/ban");
        assert_eq!(ban.body, Some(json!({"user_id": "42", "for_secs": 3600, "reason": "spam"})));
        let who = parse(&args("who forum:7")).unwrap();
        assert_eq!((who.method, who.path.as_str()), ("GET", "/api/presence?channel=forum:7"));
        let unban = parse(&args("unban a/b")).unwrap();
        assert_eq!(unban.path, "/api/ban/a%2Fb");
        assert!(parse(&args("mute 42")).unwrap_err().contains("--for"));
        assert!(parse(&args("frobnicate")).is_err());
        assert!(parse(&args("ban 42 --for soon")).is_err());
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("90s"), Ok(90));
        assert_eq!(parse_duration("10m"), Ok(600));
        assert_eq!(parse_duration("1w"), Ok(604_800));
        assert_eq!(parse_duration("45"), Ok(45));
        assert!(parse_duration("0m").is_err());
        assert!(parse_duration("1y").is_err());
        assert!(parse_duration("h").is_err());
    }
}
