//! The dependency view's drawing: a layered layout computed here and drawn as SVG by a template (no JavaScript).
//!
//! Every edge is drawn from the issue that comes "first" to the one that follows: a blocker above what it blocks, a
//! parent above its sub-issues, an epic above its issues. Layers come from a breadth-first walk from the viewed
//! issue (one layer down along such an edge, one up against it); within a layer, issues sit near the average
//! position of their neighbours above (one barycentre sweep), which keeps most arrows short and uncrossed.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};

use crate::domain::IssueKey;
use crate::domain::links::LinkType;

/// Box width.
const W: i64 = 200;
/// Box height.
const H: i64 = 58;
/// Horizontal gap between boxes.
const GAP_X: i64 = 24;
/// Vertical gap between layers.
const GAP_Y: i64 = 56;
/// Margin around the drawing.
const MARGIN: i64 = 16;
/// Characters of a summary shown in a box.
const SUMMARY_CHARS: usize = 27;

/// An issue of the graph.
pub struct Node {
    /// Key.
    pub key: String,
    /// Summary.
    pub summary: String,
    /// Status key.
    pub status_key: String,
    /// Status display name.
    pub status: String,
    /// Assignee's name.
    pub assignee: Option<String>,
}

/// A box of the drawing.
pub struct Placed {
    /// The issue's key.
    pub key: String,
    /// The summary, shortened to fit.
    pub short: String,
    /// Key, full summary and status (the tooltip).
    pub title: String,
    /// Status display name.
    pub status: String,
    /// Status key (its colour).
    pub status_key: String,
    /// Whether it is the viewed issue.
    pub root: bool,
    /// Left.
    pub x: i64,
    /// Top.
    pub y: i64,
    /// Text left.
    pub tx: i64,
    /// Baselines of the three text lines.
    pub ty: [i64; 3],
}

/// An arrow of the drawing.
pub struct Arrow {
    /// Start.
    pub x1: i64,
    /// Start.
    pub y1: i64,
    /// End (the arrowhead).
    pub x2: i64,
    /// End.
    pub y2: i64,
    /// The link type (`depends`, `subtask`, `epic`, …): its colour.
    pub kind: &'static str,
    /// Whether the link is part of a cycle.
    pub cycle: bool,
    /// What it means, e.g. "TEST-2 blocks TEST-1".
    pub title: String,
}

/// The whole drawing.
pub struct Drawing {
    /// Width in px.
    pub width: i64,
    /// Height in px.
    pub height: i64,
    /// Box size.
    pub box_w: i64,
    /// Box size.
    pub box_h: i64,
    /// Boxes.
    pub boxes: Vec<Placed>,
    /// Arrows.
    pub arrows: Vec<Arrow>,
}

/// (first, second, verb): which side of a stored edge (`from` = outward) is drawn above, and how the arrow reads.
fn orient<'a>(from: &'a str, to: &'a str, ty: LinkType) -> (&'a str, &'a str, &'static str) {
    match ty {
        // `from` depends on `to`: `to` blocks `from`.
        LinkType::Depends => (to, from, "blocks"),
        // `from` is the parent.
        LinkType::Subtask => (from, to, "is the parent of"),
        // `from` is in the epic `to`.
        LinkType::Epic => (to, from, "is the epic of"),
        LinkType::Relates => (from, to, "relates to"),
        LinkType::Duplicates => (from, to, "duplicates"),
        LinkType::Clone => (from, to, "is a clone of"),
    }
}

/// Issue keys in natural order (TEST-9 before TEST-10).
fn natural(key: &str) -> (String, i64, String) {
    match IssueKey::parse(key) {
        Some(k) => (k.queue.as_str().to_owned(), k.number, String::new()),
        None => (String::new(), 0, key.to_owned()),
    }
}

fn shorten(s: &str, n: usize) -> String {
    if s.chars().count() <= n {
        s.to_owned()
    } else {
        let mut out: String = s.chars().take(n.saturating_sub(1)).collect();
        out.push('…');
        out
    }
}

/// Lays out the graph of `root`: `edges` are (outward key, inward key, type); `cycles` are closed paths of keys.
pub fn draw(root: &str, nodes: &[Node], edges: &[(String, String, LinkType)], cycles: &[Vec<String>]) -> Drawing {
    let known: HashSet<&str> = nodes.iter().map(|n| n.key.as_str()).collect();
    let mut oriented: Vec<(&str, &str, LinkType, &'static str)> = edges
        .iter()
        .filter(|(a, b, _)| known.contains(a.as_str()) && known.contains(b.as_str()) && a != b)
        .map(|(a, b, t)| {
            let (first, second, verb) = orient(a, b, *t);
            (first, second, *t, verb)
        })
        .collect();
    oriented.sort_by_key(|(a, b, _, _)| (natural(a), natural(b)));

    // Layers: BFS from the root, then from any issue the walk did not reach.
    let mut layer: HashMap<&str, i64> = HashMap::new();
    let mut starts: Vec<&str> = vec![root];
    let mut rest: Vec<&str> = nodes.iter().map(|n| n.key.as_str()).filter(|k| *k != root).collect();
    rest.sort_by_key(|k| natural(k));
    starts.extend(rest);
    for start in starts {
        if layer.contains_key(start) || !known.contains(start) {
            continue;
        }
        layer.insert(start, 0);
        let mut queue = VecDeque::from([start]);
        while let Some(n) = queue.pop_front() {
            let here = layer.get(n).copied().unwrap_or(0);
            for (first, second, _, _) in &oriented {
                let (other, at) = if *first == n {
                    (*second, here + 1)
                } else if *second == n {
                    (*first, here - 1)
                } else {
                    continue;
                };
                if !layer.contains_key(other) {
                    layer.insert(other, at);
                    queue.push_back(other);
                }
            }
        }
    }
    let top = layer.values().copied().min().unwrap_or(0);
    let mut layers: BTreeMap<i64, Vec<&str>> = BTreeMap::new();
    for (k, l) in &layer {
        layers.entry(l - top).or_default().push(k);
    }

    // Order within layers: the first by key, each next one by the mean position of its neighbours above.
    let mut pos: HashMap<&str, f64> = HashMap::new();
    for members in layers.values_mut() {
        let bary = |k: &str| -> Option<f64> {
            let above: Vec<f64> = oriented
                .iter()
                .filter_map(|(a, b, _, _)| {
                    if *b == k {
                        pos.get(a).copied()
                    } else if *a == k {
                        pos.get(b).copied()
                    } else {
                        None
                    }
                })
                .collect();
            (!above.is_empty()).then(|| above.iter().sum::<f64>() / above.len() as f64)
        };
        let mut keyed: Vec<(f64, (String, i64, String), &str)> = members
            .iter()
            .map(|k| (bary(k).unwrap_or(f64::MAX), natural(k), *k))
            .collect();
        keyed.sort_by(|x, y| x.0.total_cmp(&y.0).then_with(|| x.1.cmp(&y.1)));
        *members = keyed.into_iter().map(|(_, _, k)| k).collect();
        for (i, k) in members.iter().enumerate() {
            pos.insert(k, i as f64);
        }
    }

    let widest = layers.values().map(Vec::len).max().unwrap_or(1).max(1) as i64;
    let width = 2 * MARGIN + widest * W + (widest - 1) * GAP_X;
    let rows = layers.len().max(1) as i64;
    let height = 2 * MARGIN + rows * H + (rows - 1) * GAP_Y;
    let by_key: HashMap<&str, &Node> = nodes.iter().map(|n| (n.key.as_str(), n)).collect();
    let mut boxes = Vec::new();
    let mut at: HashMap<&str, (i64, i64)> = HashMap::new();
    for (row, members) in layers.values().enumerate() {
        let n = members.len() as i64;
        let left = (width - (n * W + (n - 1) * GAP_X)) / 2;
        let y = MARGIN + row as i64 * (H + GAP_Y);
        for (i, k) in members.iter().enumerate() {
            let x = left + i as i64 * (W + GAP_X);
            at.insert(k, (x, y));
            let Some(node) = by_key.get(k) else { continue };
            boxes.push(Placed {
                key: node.key.clone(),
                short: shorten(&node.summary, SUMMARY_CHARS),
                title: format!("{}: {} ({})", node.key, node.summary, node.status),
                status: node.status.clone(),
                status_key: node.status_key.clone(),
                root: node.key == root,
                x,
                y,
                tx: x + 10,
                ty: [y + 18, y + 35, y + 51],
            });
        }
    }

    let in_cycle: HashSet<(&str, &str)> = cycles
        .iter()
        .flat_map(|c| (0..c.len()).map(move |i| (c[i].as_str(), c[(i + 1) % c.len()].as_str())))
        .collect();
    let arrows = edges
        .iter()
        .filter_map(|(a, b, t)| {
            let (first, second, verb) = orient(a, b, *t);
            let (&(fx, fy), &(sx, sy)) = (at.get(first)?, at.get(second)?);
            // Arrows between layers leave and enter a box off-centre, towards the other end, so that several
            // arrows meeting one box do not share one point.
            let lean = |own: i64, other: i64| ((other - own) / 4).clamp(-(W / 2 - 14), W / 2 - 14);
            let (x1, x2) = (fx + W / 2 + lean(fx, sx), sx + W / 2 + lean(sx, fx));
            let (x1, y1, x2, y2) = if sy > fy {
                (x1, fy + H, x2, sy - 2)
            } else if sy < fy {
                (x1, fy, x2, sy + H + 2)
            } else if sx > fx {
                (fx + W, fy + H / 2, sx - 2, sy + H / 2)
            } else {
                (fx, fy + H / 2, sx + W + 2, sy + H / 2)
            };
            Some(Arrow {
                x1,
                y1,
                x2,
                y2,
                kind: t.id(),
                cycle: in_cycle.contains(&(a.as_str(), b.as_str())),
                title: format!("{first} {verb} {second}"),
            })
        })
        .collect();
    Drawing {
        width,
        height,
        box_w: W,
        box_h: H,
        boxes,
        arrows,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(key: &str) -> Node {
        Node {
            key: key.into(),
            summary: format!("summary of {key}"),
            status_key: "open".into(),
            status: "Open".into(),
            assignee: None,
        }
    }

    fn y_of(d: &Drawing, key: &str) -> i64 {
        d.boxes.iter().find(|b| b.key == key).map(|b| b.y).unwrap_or(-1)
    }

    fn e(a: &str, b: &str, t: LinkType) -> (String, String, LinkType) {
        (a.into(), b.into(), t)
    }

    #[test]
    fn blockers_parents_and_epics_are_drawn_above_what_follows_them() {
        let nodes: Vec<Node> = ["T-1", "T-2", "T-3", "T-4", "T-5"].into_iter().map(node).collect();
        let edges = [
            e("T-1", "T-2", LinkType::Depends), // T-1 depends on T-2: T-2 above
            e("T-1", "T-3", LinkType::Subtask), // T-1 is the parent of T-3: T-3 below
            e("T-4", "T-2", LinkType::Epic),    // T-4 is in the epic T-2: T-2 above
            e("T-5", "T-1", LinkType::Depends), // T-5 depends on T-1: T-5 below
        ];
        let d = draw("T-1", &nodes, &edges, &[]);
        assert!(y_of(&d, "T-2") < y_of(&d, "T-1"));
        assert!(y_of(&d, "T-3") > y_of(&d, "T-1"));
        assert!(y_of(&d, "T-5") > y_of(&d, "T-1"));
        assert!(y_of(&d, "T-4") > y_of(&d, "T-2"));
        assert_eq!(d.boxes.len(), 5);
        assert_eq!(d.arrows.len(), 4);
        let titles: Vec<&str> = d.arrows.iter().map(|a| a.title.as_str()).collect();
        assert!(titles.contains(&"T-2 blocks T-1"), "{titles:?}");
        assert!(titles.contains(&"T-1 is the parent of T-3"), "{titles:?}");
    }

    #[test]
    fn boxes_never_overlap_and_fit_the_drawing() {
        let nodes: Vec<Node> = (1..=9).map(|i| node(&format!("T-{i}"))).collect();
        let edges: Vec<_> = (2..=9)
            .map(|i| e("T-1", &format!("T-{i}"), LinkType::Subtask))
            .collect();
        let d = draw("T-1", &nodes, &edges, &[]);
        for a in &d.boxes {
            assert!(a.x >= 0 && a.y >= 0 && a.x + W <= d.width && a.y + H <= d.height);
            for b in &d.boxes {
                if a.key != b.key {
                    let apart = a.x + W <= b.x || b.x + W <= a.x || a.y + H <= b.y || b.y + H <= a.y;
                    assert!(apart, "{} and {} overlap", a.key, b.key);
                }
            }
        }
    }

    #[test]
    fn the_links_of_a_cycle_are_marked() {
        let nodes: Vec<Node> = ["T-1", "T-2", "T-3"].into_iter().map(node).collect();
        let edges = [
            e("T-1", "T-2", LinkType::Depends),
            e("T-2", "T-1", LinkType::Depends),
            e("T-1", "T-3", LinkType::Subtask),
        ];
        let cycles = vec![vec!["T-1".to_owned(), "T-2".to_owned()]];
        let d = draw("T-1", &nodes, &edges, &cycles);
        let marked: Vec<bool> = d.arrows.iter().map(|a| a.cycle).collect();
        assert_eq!(marked, vec![true, true, false]);
    }

    #[test]
    fn long_summaries_are_shortened_with_an_ellipsis() {
        assert_eq!(shorten("short", 10), "short");
        assert_eq!(shorten("ёжик в тумане и дальше", 6), "ёжик …");
    }

    #[test]
    fn an_issue_without_links_is_one_box() {
        let d = draw("T-1", &[node("T-1")], &[], &[]);
        assert_eq!(d.boxes.len(), 1);
        assert!(d.boxes[0].root);
        assert_eq!(d.width, 2 * MARGIN + W);
    }
}
