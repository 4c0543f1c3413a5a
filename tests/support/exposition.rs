//! Reading Prometheus's text exposition format (what `metrics-exporter-prometheus` renders), for
//! the tests that assert series and values (`metrics`, `prometheus`).

use std::collections::BTreeMap;

/// One sample line: `name{label="value",...} value`.
#[derive(Clone, Debug, PartialEq)]
pub struct Sample {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub value: f64,
}

/// The samples of a rendered exposition (comments and blank lines skipped).
pub fn parse(text: &str) -> Vec<Sample> {
    text.lines()
        .filter(|line| !line.is_empty() && !line.starts_with('#'))
        .map(|line| {
            let (series, value) = line.rsplit_once(' ').expect("a sample line has a value");
            let value: f64 = value
                .parse()
                .unwrap_or_else(|_| panic!("a value in {line:?}"));
            let (name, labels) = match series.split_once('{') {
                Some((name, rest)) => (name, parse_labels(rest.trim_end_matches('}'))),
                None => (series, BTreeMap::new()),
            };
            Sample {
                name: name.to_owned(),
                labels,
                value,
            }
        })
        .collect()
}

fn parse_labels(text: &str) -> BTreeMap<String, String> {
    let mut labels = BTreeMap::new();
    let mut rest = text;
    while let Some((key, after)) = rest.split_once("=\"") {
        let end = after.find('"').expect("a closing quote");
        labels.insert(
            key.trim_start_matches(',').to_owned(),
            after[..end].to_owned(),
        );
        rest = &after[end + 1..];
    }
    labels
}

/// The value of the one sample named `name` whose labels include `labels`; panics if there is
/// none or more than one, with what there is.
#[track_caller]
pub fn value(samples: &[Sample], name: &str, labels: &[(&str, &str)]) -> f64 {
    let found: Vec<&Sample> = matching(samples, name, labels).collect();
    match found[..] {
        [one] => one.value,
        _ => panic!(
            "{} samples {name}{labels:?} in:\n{}",
            found.len(),
            samples
                .iter()
                .filter(|s| s.name == name)
                .map(|s| format!("{s:?}"))
                .collect::<Vec<_>>()
                .join("\n")
        ),
    }
}

/// Whether a sample named `name` with `labels` exists.
pub fn has(samples: &[Sample], name: &str, labels: &[(&str, &str)]) -> bool {
    matching(samples, name, labels).next().is_some()
}

fn matching<'a>(
    samples: &'a [Sample],
    name: &'a str,
    labels: &'a [(&str, &str)],
) -> impl Iterator<Item = &'a Sample> {
    samples.iter().filter(move |s| {
        s.name == name
            && labels
                .iter()
                .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
    })
}
