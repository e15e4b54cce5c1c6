//! SVG line charts, drawn on the server so that pages need no script:
//! one or more series over time, an optional target line, and points
//! marked as failed. Text in the SVG is escaped here; callers put the
//! result into a page unescaped.

use std::fmt::Write as _;

/// Size of the drawing and its margins, in SVG units.
const W: f64 = 640.0;
const H: f64 = 180.0;
const LEFT: f64 = 64.0;
const RIGHT: f64 = 12.0;
const TOP: f64 = 12.0;
const BOTTOM: f64 = 24.0;

/// One point: time (µs since the epoch), value, and whether it failed.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) struct Point {
    pub(crate) t: i64,
    pub(crate) v: f64,
    pub(crate) failed: bool,
}

/// A chart to draw.
pub(crate) struct Chart<'a> {
    /// Read by screen readers (`<title>`).
    pub(crate) title: &'a str,
    /// Each series: a CSS class (`a` or `b`) and its points, oldest first.
    pub(crate) series: Vec<(&'static str, Vec<Point>)>,
    /// A horizontal target line.
    pub(crate) target: Option<f64>,
    /// How the value axis is labelled.
    pub(crate) unit: fn(f64) -> String,
    /// How the time axis is labelled.
    pub(crate) time: fn(i64) -> String,
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

impl Chart<'_> {
    /// The `<svg>` element; a note instead when there is nothing to draw.
    pub(crate) fn svg(&self) -> String {
        let all: Vec<Point> = self
            .series
            .iter()
            .flat_map(|(_, p)| p.iter().copied())
            .collect();
        if all.is_empty() {
            return "<p class=\"none\">Nothing recorded yet.</p>".into();
        }
        let (t0, t1) = all
            .iter()
            .fold((i64::MAX, i64::MIN), |(a, b), p| (a.min(p.t), b.max(p.t)));
        let top = all
            .iter()
            .map(|p| p.v)
            .chain(self.target)
            .fold(0.0_f64, f64::max)
            .max(f64::MIN_POSITIVE)
            * 1.1;
        let span = (t1 - t0).max(1) as f64;
        let x = |t: i64| {
            if t1 == t0 {
                LEFT + (W - LEFT - RIGHT) / 2.0
            } else {
                LEFT + (t - t0) as f64 / span * (W - LEFT - RIGHT)
            }
        };
        let y = |v: f64| TOP + (1.0 - v / top) * (H - TOP - BOTTOM);
        let mut s = String::new();
        let _ = write!(
            s,
            "<svg class=\"chart\" viewBox=\"0 0 {W} {H}\" role=\"img\" xmlns=\"http://www.w3.org/2000/svg\"><title>{}</title>",
            escape(self.title)
        );
        for i in 0..=4 {
            let v = top / 1.1 * f64::from(i) / 4.0;
            let _ = write!(
                s,
                "<line class=\"grid\" x1=\"{LEFT}\" x2=\"{}\" y1=\"{y:.1}\" y2=\"{y:.1}\"/><text class=\"axis\" x=\"{}\" y=\"{:.1}\" text-anchor=\"end\">{}</text>",
                W - RIGHT,
                LEFT - 6.0,
                y(v) + 4.0,
                escape(&(self.unit)(v)),
                y = y(v),
            );
        }
        for (t, anchor) in [(t0, "start"), (t1, "end")] {
            let _ = write!(
                s,
                "<text class=\"axis\" x=\"{:.1}\" y=\"{}\" text-anchor=\"{anchor}\">{}</text>",
                x(t),
                H - 6.0,
                escape(&(self.time)(t))
            );
        }
        if let Some(target) = self.target {
            let _ = write!(
                s,
                "<line class=\"target\" x1=\"{LEFT}\" x2=\"{}\" y1=\"{y:.1}\" y2=\"{y:.1}\"/><text class=\"target-label\" x=\"{}\" y=\"{:.1}\" text-anchor=\"end\">target {}</text>",
                W - RIGHT,
                W - RIGHT,
                y(target) - 4.0,
                escape(&(self.unit)(target)),
                y = y(target),
            );
        }
        for (class, points) in &self.series {
            let line: Vec<String> = points
                .iter()
                .map(|p| format!("{:.1},{:.1}", x(p.t), y(p.v)))
                .collect();
            let _ = write!(
                s,
                "<polyline class=\"series {class}\" points=\"{}\"/>",
                line.join(" ")
            );
            for p in points {
                let _ = write!(
                    s,
                    "<circle class=\"{class}{}\" cx=\"{:.1}\" cy=\"{:.1}\" r=\"3\"><title>{}: {}</title></circle>",
                    if p.failed { " failed" } else { "" },
                    x(p.t),
                    y(p.v),
                    escape(&(self.time)(p.t)),
                    escape(&(self.unit)(p.v)),
                );
            }
        }
        s.push_str("</svg>");
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chart(series: Vec<(&'static str, Vec<Point>)>, target: Option<f64>) -> String {
        Chart {
            title: "RPO <of> a",
            series,
            target,
            unit: |v| format!("{v:.0}s"),
            time: |t| format!("t{t}"),
        }
        .svg()
    }

    #[test]
    fn points_land_inside_the_drawing_and_text_is_escaped() {
        let p = |t, v, failed| Point { t, v, failed };
        let s = chart(
            vec![("a", vec![p(0, 10.0, false), p(100, 30.0, true)])],
            Some(20.0),
        );
        assert!(s.starts_with("<svg") && s.ends_with("</svg>"));
        assert!(s.contains("RPO &lt;of&gt; a") && !s.contains("<of>"));
        assert!(s.contains("class=\"a failed\""));
        assert!(s.contains("target 20s"));
        // x from LEFT to W - RIGHT, y from TOP to H - BOTTOM.
        assert!(s.contains(&format!("points=\"{LEFT:.1},")));
        assert!(s.contains(&format!("{:.1},", W - RIGHT)));
        for (i, c) in s.match_indices("cy=\"") {
            let rest = &s[i + c.len()..];
            let v: f64 = rest[..rest.find('"').unwrap()].parse().unwrap();
            assert!((TOP..=H - BOTTOM).contains(&v), "{v}");
        }
        // One point is drawn in the middle; no points, a note.
        assert!(chart(vec![("a", vec![p(5, 1.0, false)])], None).contains("cx=\"346.0\""));
        assert!(chart(vec![("a", vec![])], None).contains("Nothing recorded"));
    }
}
