//! The Grafana dashboard (`compose/grafana/xsite-dashboard.json`) plots only what the
//! nodes export. A two-site mesh on librdkafka's mock cluster replicates a few keys;
//! then every metric a query of the dashboard names (`xsite_…`, in panels, nested
//! rows and template variables) must be a sample name each node serves at `/metrics`
//! — what Prometheus stores, so a counter's `_total` and a histogram's `_bucket`,
//! `_sum`, `_count`, never the bare family name — and every label a query groups
//! by, selects on or puts in its legend must be one of those samples' labels (or
//! `instance`, `job`: Prometheus adds them). Every panel reads the Prometheus
//! datasource variable, and the remote state's value mappings are the codes the
//! metric's help gives. `/metrics` is read with the strict parser of `support/prom.rs`.

#[path = "support/prom.rs"]
mod prom;
mod support;

use prom::Scrape;
use redis::AsyncCommands;
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};
use support::{wait_get, Mesh, WAIT};

const DASHBOARD: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../compose/grafana/xsite-dashboard.json");

/// Panels with queries the dashboard has at least.
const QUERY_PANELS_MIN: usize = 8;

/// Labels Prometheus adds to every series it scrapes.
const TARGET_LABELS: [&str; 2] = ["instance", "job"];

/// PromQL keywords followed by a parenthesized list of label names.
const LABEL_LIST_KEYWORDS: [&str; 6] = ["by", "without", "on", "ignoring", "group_left", "group_right"];

/// Keys each site writes.
const KEYS_PER_SITE: usize = 5;

/// One PromQL query of the dashboard, and where it is.
#[derive(Debug)]
struct Query {
    place: String,
    expr: String,
    legend: String,
}

fn dashboard() -> Value {
    let text = std::fs::read_to_string(DASHBOARD).unwrap_or_else(|e| panic!("{DASHBOARD}: {e}"));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{DASHBOARD}: {e}"))
}

/// Every panel, the panels of rows included.
fn panels(parent: &Value) -> Vec<&Value> {
    let mut out = Vec::new();
    for p in parent["panels"].as_array().into_iter().flatten() {
        out.push(p);
        out.extend(panels(p));
    }
    out
}

fn targets(panel: &Value) -> &[Value] {
    panel["targets"].as_array().map_or(&[], Vec::as_slice)
}

fn variables(dash: &Value) -> &[Value] {
    dash["templating"]["list"].as_array().map_or(&[], Vec::as_slice)
}

/// Every query: each panel target's `expr` and each query variable's query.
fn queries(dash: &Value) -> Vec<Query> {
    let mut out = Vec::new();
    for p in panels(dash) {
        for t in targets(p) {
            let place = format!(
                "panel {:?} target {}",
                p["title"].as_str().unwrap_or_default(),
                t["refId"].as_str().unwrap_or_default()
            );
            let expr = t["expr"].as_str().unwrap_or_else(|| panic!("{place}: no expr"));
            let legend = t["legendFormat"].as_str().unwrap_or_default();
            out.push(Query { place, expr: expr.into(), legend: legend.into() });
        }
    }
    for v in variables(dash).iter().filter(|v| v["type"] == "query") {
        let place = format!("variable {}", v["name"].as_str().unwrap_or_default());
        let expr = v["query"].as_str().or(v["query"]["query"].as_str());
        let expr = expr.unwrap_or_else(|| panic!("{place}: no query"));
        out.push(Query { place, expr: expr.into(), legend: String::new() });
    }
    out
}

/// May `c` be part of a PromQL name?
fn ident(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_' || c == ':'
}

/// The tokens of `expr` matching `xsite_[a-z0-9_]+` that do not start inside
/// another name.
fn metric_names(expr: &str) -> BTreeSet<&str> {
    let bytes = expr.as_bytes();
    let starts = expr.match_indices("xsite_").map(|(i, _)| i).filter(|&i| i == 0 || !ident(bytes[i - 1] as char));
    starts
        .map(|i| {
            let len = bytes[i..].iter().take_while(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || **c == b'_');
            &expr[i..i + len.count()]
        })
        .collect()
}

/// `expr` without the contents of its string literals (label values, which may
/// hold `,` `{` `}`).
fn without_strings(expr: &str) -> String {
    let mut out = String::new();
    let mut quote = None;
    let mut chars = expr.chars();
    while let Some(c) = chars.next() {
        match (quote, c) {
            (None, '"' | '\'' | '`') => quote = Some(c),
            (Some(_), '\\') => {
                chars.next();
            }
            (Some(q), c) if c == q => quote = None,
            (Some(_), _) => {}
            (None, c) => out.push(c),
        }
    }
    out
}

/// The text between each `open` and the next `close`.
fn between<'a>(text: &'a str, open: &'a str, close: &'a str) -> impl Iterator<Item = &'a str> {
    text.split(open).skip(1).filter_map(move |s| s.split_once(close).map(|(inside, _)| inside))
}

/// The label names a query uses: in `by (…)`-style lists, in selectors
/// (`{name=~"…"}`) and as `{{name}}` in its legend.
fn label_names(q: &Query) -> BTreeSet<String> {
    let expr = without_strings(&q.expr);
    let mut out = BTreeSet::new();
    for (i, _) in expr.match_indices('(') {
        let before = expr[..i].trim_end();
        let word = &before[before.trim_end_matches(ident).len()..];
        if LABEL_LIST_KEYWORDS.contains(&word) {
            let list = expr[i + 1..].split(')').next().unwrap_or_default();
            out.extend(list.split(',').map(str::trim).filter(|l| !l.is_empty()).map(String::from));
        }
    }
    for selector in between(&expr, "{", "}") {
        let names = selector.split(',').map(|m| m.split(['=', '!', '~']).next().unwrap_or_default().trim());
        out.extend(names.filter(|l| !l.is_empty()).map(String::from));
    }
    out.extend(between(&q.legend, "{{", "}}").map(|l| l.trim().to_string()));
    out
}

/// What a query names that `scrape` does not have, one line each.
fn not_exported(q: &Query, scrape: &Scrape) -> Vec<String> {
    let mut out = Vec::new();
    let mut labels: BTreeSet<&str> = TARGET_LABELS.into();
    for name in metric_names(&q.expr) {
        let samples: Vec<_> = scrape.samples(name, &[]).collect();
        labels.extend(samples.iter().flat_map(|s| s.labels.keys().map(String::as_str)));
        if !samples.is_empty() {
            continue;
        }
        let hint = match scrape.families.get(name) {
            Some(f) => {
                let names: BTreeSet<_> = f.samples.iter().map(|s| s.name.as_str()).collect();
                format!(" ({} family: its samples are {names:?})", f.kind)
            }
            None => String::new(),
        };
        out.push(format!("{}: no metric {name}{hint}: {}", q.place, q.expr));
    }
    if !out.is_empty() {
        return out; // its labels cannot be checked
    }
    for label in label_names(q) {
        if !labels.contains(label.as_str()) {
            out.push(format!("{}: no label {label} on its metrics: {} / {:?}", q.place, q.expr, q.legend));
        }
    }
    out
}

/// The name of the template variable that picks a Prometheus datasource.
fn prometheus_variable(dash: &Value) -> String {
    let var = variables(dash).iter().find(|v| v["type"] == "datasource" && v["query"] == "prometheus");
    let var = var.unwrap_or_else(|| panic!("no datasource variable of type prometheus: {:#}", dash["templating"]));
    var["name"].as_str().expect("a variable has a name").to_string()
}

fn reads_variable(datasource: &Value, var: &str) -> bool {
    let uid = datasource["uid"].as_str().unwrap_or_default();
    datasource["type"] == "prometheus" && (uid == format!("${{{var}}}") || uid == format!("${var}"))
}

/// The value mappings of the panels that plot `metric`: code to text.
fn value_mappings(dash: &Value, metric: &str) -> BTreeMap<String, String> {
    let plots =
        |p: &&Value| targets(p).iter().any(|t| t["expr"].as_str().is_some_and(|e| metric_names(e).contains(metric)));
    let mut out = BTreeMap::new();
    for p in panels(dash).into_iter().filter(plots) {
        let mappings = p["fieldConfig"]["defaults"]["mappings"].as_array().into_iter().flatten();
        for options in mappings.filter(|m| m["type"] == "value").filter_map(|m| m["options"].as_object()) {
            out.extend(options.iter().map(|(code, o)| (code.clone(), o["text"].as_str().unwrap_or_default().into())));
        }
    }
    out
}

async fn metrics(mesh: &Mesh, i: usize) -> Scrape {
    let url = format!("http://{}/metrics", mesh.node(i).admin_addr.unwrap());
    let text = reqwest::get(url).await.unwrap().error_for_status().unwrap().text().await.unwrap();
    Scrape::parse(&text).unwrap_or_else(|e| panic!("{e}\n{text}"))
}

/// Waits until node `i`'s metrics satisfy `ok`; returns them.
async fn wait_metrics(mesh: &Mesh, i: usize, what: &str, ok: impl Fn(&Scrape) -> bool) -> Scrape {
    let deadline = Instant::now() + WAIT;
    loop {
        let m = metrics(mesh, i).await;
        if ok(&m) {
            return m;
        }
        assert!(Instant::now() < deadline, "node {i} never: {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Node `i`'s metrics once it has applied the other site's keys and a health check
/// has measured the lag from it.
async fn replicated_metrics(mesh: &Mesh, i: usize, remote: &str) -> Scrape {
    wait_metrics(mesh, i, "applied the keys and measured the lag", |m| {
        let origin = [("origin", remote)];
        m.sum("xsite_conflicts_total", &[("outcome", "won")]) >= KEYS_PER_SITE as f64
            && m.max("xsite_replication_lag_seconds_count", &origin) > 0.0
            && m.samples("xsite_replication_lag_ms", &origin).count() > 0
    })
    .await
}

#[test]
fn every_panel_reads_the_prometheus_datasource_variable() {
    let dash = dashboard();
    assert!(dash["schemaVersion"].as_u64().is_some_and(|v| v >= 36), "schemaVersion {}", dash["schemaVersion"]);
    let var = prometheus_variable(&dash);
    let mut with_queries = 0;
    for p in panels(&dash) {
        let title = &p["title"];
        if p["type"] == "row" {
            assert!(targets(p).is_empty(), "row {title} has queries");
            let ds = &p["datasource"];
            assert!(ds.is_null() || reads_variable(ds, &var), "row {title}: datasource {ds}");
            continue;
        }
        assert!(reads_variable(&p["datasource"], &var), "panel {title}: datasource {} is not ${var}", p["datasource"]);
        for t in targets(p) {
            let ds = &t["datasource"];
            assert!(ds.is_null() || reads_variable(ds, &var), "panel {title} target {}: datasource {ds}", t["refId"]);
        }
        with_queries += usize::from(!targets(p).is_empty());
    }
    assert!(with_queries >= QUERY_PANELS_MIN, "{with_queries} panels with queries, want {QUERY_PANELS_MIN}");
    for v in variables(&dash).iter().filter(|v| v["type"] == "query") {
        assert!(reads_variable(&v["datasource"], &var), "variable {}: datasource {}", v["name"], v["datasource"]);
    }
}

#[test]
fn metric_and_label_names_are_read_from_promql() {
    let q = Query {
        place: "test".into(),
        expr: r#"histogram_quantile(0.99, sum by (le, origin) (rate(xsite_a_bucket{instance=~"x,{y}"}[5m]))) / on(cache) xsite_b_total"#.into(),
        legend: "{{origin}} {{ cache }}".into(),
    };
    assert_eq!(metric_names(&q.expr), BTreeSet::from(["xsite_a_bucket", "xsite_b_total"]));
    assert_eq!(metric_names("not_xsite_a + xsite_b"), BTreeSet::from(["xsite_b"]));
    let labels: Vec<_> = label_names(&q).into_iter().collect();
    assert_eq!(labels, ["cache", "instance", "le", "origin"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_metric_and_label_the_dashboard_queries_is_exported() {
    let dash = dashboard();
    let queries = queries(&dash);
    let mesh = Mesh::start(2).await;
    let (mut a, mut b) = (mesh.conn(0).await, mesh.conn(1).await);
    for i in 0..KEYS_PER_SITE {
        let _: () = a.set(format!("a-{i}"), i).await.unwrap();
        let _: () = b.set(format!("b-{i}"), i).await.unwrap();
    }
    let last = KEYS_PER_SITE - 1;
    wait_get(&mut b, format!("a-{last}").as_bytes(), Some(last.to_string().as_bytes())).await;
    wait_get(&mut a, format!("b-{last}").as_bytes(), Some(last.to_string().as_bytes())).await;

    for (i, remote) in [(0, "site-b"), (1, "site-a")] {
        let scrape = replicated_metrics(&mesh, i, remote).await;
        let missing: Vec<_> = queries.iter().flat_map(|q| not_exported(q, &scrape)).collect();
        assert!(missing.is_empty(), "node {i}: the dashboard queries what it does not export:\n{}", missing.join("\n"));

        // The check itself finds a metric that does not exist, and a bare family name.
        for expr in ["rate(xsite_no_such_metric_total[5m])", "rate(xsite_conflicts[5m])"] {
            let bogus = Query { place: "bogus".into(), expr: expr.into(), legend: String::new() };
            assert_eq!(not_exported(&bogus, &scrape).len(), 1, "{expr} passed");
        }

        let help = &scrape.families["xsite_remote_state"].help;
        let codes = help.trim_end_matches('.').split_once(": ").map_or("", |(_, codes)| codes).split(", ");
        let codes: BTreeMap<_, _> =
            codes.filter_map(|c| c.split_once(' ')).map(|(code, text)| (code.to_string(), text.to_string())).collect();
        assert_eq!(codes.len(), 4, "{help}");
        assert_eq!(value_mappings(&dash, "xsite_remote_state"), codes, "the state panel's mappings, against: {help}");
    }
    mesh.shutdown().await;
}
