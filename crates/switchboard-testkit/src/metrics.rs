//! Reading the Prometheus page of a deployment's admin listener (`GET /metrics`).

/// Every sample of `name` whose labels include `labels`, summed; `None` when the page
/// has none. Fails the test if `page` is not Prometheus text.
///
/// ```
/// let page = "# TYPE switchboard_clients gauge\n\
///             switchboard_clients{listener=\"main\",protocol=\"text\"} 3\n\
///             switchboard_clients{listener=\"web\",protocol=\"websocket\"} 2\n";
/// use switchboard_testkit::metric;
/// assert_eq!(metric(page, "switchboard_clients", &[]), Some(5.0));
/// assert_eq!(metric(page, "switchboard_clients", &[("listener", "web")]), Some(2.0));
/// assert_eq!(metric(page, "switchboard_events_total", &[]), None);
/// ```
pub fn metric(page: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let lines = page.lines().map(|l| Ok(l.to_owned()));
    let scrape = prometheus_parse::Scrape::parse(lines).expect("a Prometheus text page");
    let mut found = None;
    for s in scrape.samples.iter().filter(|s| s.metric == name) {
        if labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)) {
            let v = match s.value {
                prometheus_parse::Value::Counter(v)
                | prometheus_parse::Value::Gauge(v)
                | prometheus_parse::Value::Untyped(v) => v,
                _ => continue,
            };
            *found.get_or_insert(0.0) += v;
        }
    }
    found
}
