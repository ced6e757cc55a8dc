//! A strict parser of the OpenMetrics text format (what `GET /metrics` serves), for
//! tests: it refuses what a scraper could misread instead of skipping it — a line
//! that is not a comment, descriptor or sample, a sample before its family's
//! `# TYPE` or apart from the rest of its family, a name given two `# TYPE` lines,
//! a suffix the type does not have, a series twice, a malformed label or value, a
//! negative counter, a histogram whose buckets do not add up, a missing `# EOF`.
//! (The crates that parse this format skip lines they do not understand, or do not
//! know OpenMetrics counters, so they would hide the faults this looks for.)

use std::collections::{BTreeMap, BTreeSet};

pub type Labels = BTreeMap<String, String>;

#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub name: String,
    pub labels: Labels,
    pub value: f64,
}

#[derive(Debug, Clone, Default)]
pub struct Family {
    pub kind: String,
    pub help: String,
    pub samples: Vec<Sample>,
}

#[derive(Debug, Default)]
pub struct Scrape {
    pub families: BTreeMap<String, Family>,
}

fn suffixes(kind: &str) -> &'static [&'static str] {
    match kind {
        "counter" => &["_total", "_created"],
        "histogram" => &["_bucket", "_count", "_sum", "_created"],
        "summary" => &["", "_count", "_sum", "_created"],
        "info" => &["_info"],
        "gauge" | "unknown" | "stateset" | "gaugehistogram" => &[""],
        _ => &[],
    }
}

fn metric_name_ok(name: &str) -> bool {
    let mut chars = name.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || c == ':')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
}

fn parse_value(s: &str) -> Result<f64, String> {
    match s {
        "+Inf" => Ok(f64::INFINITY),
        "-Inf" => Ok(f64::NEG_INFINITY),
        "NaN" => Ok(f64::NAN),
        _ => s.parse::<f64>().map_err(|_| format!("bad value {s:?}")),
    }
}

/// `{a="x",b="y"}` at the start of `s`: the labels and the rest of the line.
fn parse_labels(s: &str) -> Result<(Labels, &str), String> {
    let mut labels = Labels::new();
    let mut rest = s.strip_prefix('{').ok_or("labels must start with {")?;
    if let Some(r) = rest.strip_prefix('}') {
        return Ok((labels, r));
    }
    loop {
        let eq = rest.find('=').ok_or_else(|| format!("label without '=' in {s:?}"))?;
        let key = &rest[..eq];
        if !metric_name_ok(key) || key.contains(':') {
            return Err(format!("bad label name {key:?}"));
        }
        let mut chars = rest[eq + 1..].char_indices();
        if chars.next().map(|(_, c)| c) != Some('"') {
            return Err(format!("label {key} value not quoted"));
        }
        let mut value = String::new();
        let end = loop {
            match chars.next() {
                None => return Err(format!("label {key} value not closed")),
                Some((i, '"')) => break eq + 1 + i + 1,
                Some((_, '\\')) => match chars.next().map(|(_, c)| c) {
                    Some('\\') => value.push('\\'),
                    Some('"') => value.push('"'),
                    Some('n') => value.push('\n'),
                    other => return Err(format!("bad escape {other:?} in label {key}")),
                },
                Some((_, '\n')) => return Err("newline in a label value".into()),
                Some((_, c)) => value.push(c),
            }
        };
        if labels.insert(key.to_string(), value).is_some() {
            return Err(format!("label {key} twice"));
        }
        rest = &rest[end..];
        if let Some(r) = rest.strip_prefix('}') {
            return Ok((labels, r));
        }
        rest = rest.strip_prefix(',').ok_or_else(|| format!("expected ',' or '}}' after label {key}"))?;
    }
}

fn parse_sample(line: &str) -> Result<Sample, String> {
    let name_end = line.find(['{', ' ']).ok_or("a sample needs a value")?;
    let name = &line[..name_end];
    if !metric_name_ok(name) {
        return Err(format!("bad metric name {name:?}"));
    }
    let (labels, rest) = if line[name_end..].starts_with('{') {
        parse_labels(&line[name_end..])?
    } else {
        (Labels::new(), &line[name_end..])
    };
    let rest = rest.strip_prefix(' ').ok_or("one space before the value")?;
    let mut parts = rest.split(' ');
    let value = parse_value(parts.next().unwrap_or(""))?;
    if let Some(ts) = parts.next() {
        ts.parse::<f64>().map_err(|_| format!("bad timestamp {ts:?}"))?;
    }
    if parts.next().is_some() {
        return Err("exemplars are not expected here".into());
    }
    Ok(Sample { name: name.to_string(), labels, value })
}

/// Checks one histogram family: per series, buckets in increasing `le`, counts
/// cumulative, a `+Inf` bucket equal to `_count`.
fn check_histogram(name: &str, family: &Family) -> Result<(), String> {
    /// Per series (labels but `le`): its buckets `(le, count)` and its `_count`.
    type Buckets = (Vec<(f64, f64)>, Option<f64>);
    let mut series: BTreeMap<Vec<(String, String)>, Buckets> = BTreeMap::new();
    for s in &family.samples {
        let mut key = s.labels.clone();
        let le = key.remove("le");
        let key: Vec<_> = key.into_iter().collect();
        let entry = series.entry(key).or_default();
        match (s.name.strip_prefix(name), le) {
            (Some("_bucket"), Some(le)) => entry.0.push((parse_value(&le)?, s.value)),
            (Some("_bucket"), None) => return Err(format!("{} without le", s.name)),
            (Some("_count"), _) => entry.1 = Some(s.value),
            _ => {}
        }
    }
    for (labels, (buckets, count)) in series {
        let ordered = buckets.windows(2).all(|w| w[0].0 < w[1].0 && w[0].1 <= w[1].1);
        if !ordered {
            return Err(format!("{name}{labels:?}: buckets not increasing and cumulative: {buckets:?}"));
        }
        match buckets.last() {
            Some((le, n)) if le.is_infinite() && Some(*n) == count => {}
            _ => return Err(format!("{name}{labels:?}: +Inf bucket missing or not equal to _count")),
        }
    }
    Ok(())
}

impl Scrape {
    pub fn parse(text: &str) -> Result<Scrape, String> {
        let mut scrape = Scrape::default();
        let mut current: Option<String> = None;
        let mut closed = BTreeSet::new();
        let mut seen = BTreeSet::new();
        let mut eof = false;
        for (n, line) in text.lines().enumerate() {
            let at = |e: String| format!("line {}: {e}: {line:?}", n + 1);
            if eof {
                return Err(at("text after # EOF".into()));
            }
            if line == "# EOF" {
                eof = true;
                continue;
            }
            if let Some(rest) = line.strip_prefix("# ") {
                let mut parts = rest.splitn(3, ' ');
                let (what, name, arg) = (parts.next(), parts.next().unwrap_or(""), parts.next().unwrap_or(""));
                if !metric_name_ok(name) {
                    return Err(at(format!("bad family name {name:?}")));
                }
                if current.as_deref() != Some(name) {
                    if closed.contains(name) || scrape.families.contains_key(name) {
                        return Err(at(format!("family {name} described twice")));
                    }
                    if let Some(prev) = current.replace(name.to_string()) {
                        closed.insert(prev);
                    }
                }
                let family = scrape.families.entry(name.to_string()).or_default();
                match what {
                    Some("TYPE") if family.kind.is_empty() && !suffixes(arg).is_empty() => family.kind = arg.into(),
                    Some("HELP") if family.help.is_empty() => family.help = arg.into(),
                    Some("UNIT") => {}
                    _ => return Err(at("bad or repeated descriptor".into())),
                }
                continue;
            }
            if line.starts_with('#') || line.is_empty() {
                return Err(at("not a descriptor, a sample or # EOF".into()));
            }
            let sample = parse_sample(line).map_err(at)?;
            let family_name = current.clone().ok_or_else(|| at("sample before any # TYPE".into()))?;
            let family = scrape.families.get_mut(&family_name).expect("current family");
            let suffix = sample.name.strip_prefix(family_name.as_str());
            if family.kind.is_empty() || !suffix.is_some_and(|s| suffixes(&family.kind).contains(&s)) {
                return Err(at(format!("sample outside its family {family_name} ({})", family.kind)));
            }
            if !seen.insert((sample.name.clone(), sample.labels.clone().into_iter().collect::<Vec<_>>())) {
                return Err(at("series given twice".into()));
            }
            if family.kind == "counter" && (sample.value.is_nan() || sample.value < 0.0) {
                return Err(at("a counter below 0".into()));
            }
            family.samples.push(sample);
        }
        if !eof {
            return Err("no # EOF at the end".into());
        }
        for (name, family) in &scrape.families {
            if family.kind == "histogram" {
                check_histogram(name, family)?;
            }
        }
        Ok(scrape)
    }

    /// The samples named `name` whose labels include every one of `labels`.
    pub fn samples<'a>(&'a self, name: &'a str, labels: &'a [(&str, &str)]) -> impl Iterator<Item = &'a Sample> {
        self.families.values().flat_map(|f| f.samples.iter()).filter(move |s| {
            s.name == name && labels.iter().all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
        })
    }

    /// The one sample named `name` with these labels (panics if there is none, or
    /// several).
    pub fn value(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        let found: Vec<_> = self.samples(name, labels).collect();
        assert_eq!(found.len(), 1, "{name}{labels:?}: {found:?}");
        found[0].value
    }

    pub fn sum(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.samples(name, labels).map(|s| s.value).sum()
    }

    pub fn max(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.samples(name, labels).map(|s| s.value).fold(f64::NEG_INFINITY, f64::max)
    }
}

#[test]
fn the_parser_refuses_what_a_scraper_could_misread() {
    let ok = "# HELP a_total x\n# TYPE a counter\na_total{k=\"v\\\"\"} 1\n# TYPE h histogram\nh_bucket{le=\"1.0\"} 1\nh_bucket{le=\"+Inf\"} 2\nh_count 2\nh_sum 3.5\n# EOF\n";
    let s = Scrape::parse(ok).unwrap();
    assert_eq!(s.value("a_total", &[("k", "v\"")]), 1.0);
    for bad in [
        "# TYPE a counter\na_total 1\n",                              // no EOF
        "# TYPE a counter\na 1\n# EOF\n",                             // counter without _total
        "# TYPE a gauge\na 1\n# TYPE a gauge\na{x=\"1\"} 2\n# EOF\n", // a family twice
        "# TYPE a gauge\na 1\na 2\n# EOF\n",                          // a series twice
        "# TYPE a gauge\na{x=1} 1\n# EOF\n",                          // unquoted label
        "# TYPE a gauge\na one\n# EOF\n",                             // bad value
        "b 1\n# EOF\n",                                               // no TYPE
        "# TYPE h histogram\nh_bucket{le=\"1\"} 2\nh_bucket{le=\"+Inf\"} 1\nh_count 1\n# EOF\n", // not cumulative
        "# TYPE a gauge\n\na 1\n# EOF\n",                             // blank line
    ] {
        assert!(Scrape::parse(bad).is_err(), "accepted: {bad:?}");
    }
}
