//! The key lifecycle as a picture: per algorithm, one lane per key, showing when it was
//! announced (next), when it signed (active), and how long it stayed published for
//! verification (rotated), with revocations marked. Plain SVG, rendered on the server.

use super::wire::{KeyView, KeysPage};
use leptos::prelude::*;

const WIDTH: f64 = 960.0;
const LABEL: f64 = 150.0;
const LANE: f64 = 18.0;
const GAP: f64 = 6.0;
const HEADER: f64 = 22.0;

/// One coloured stretch of a key's life.
#[derive(Debug, Clone, PartialEq)]
pub struct Segment {
    pub phase: &'static str,
    pub from: i64,
    pub to: i64,
}

/// The phases of a key between its timestamps, cut at `now` (the future of a rotated key,
/// its remaining publication, is drawn too, up to `expires`).
pub fn segments(k: &KeyView, now: i64) -> Vec<Segment> {
    let mut out = Vec::new();
    let end_of_life = k
        .revoked_ts
        .or(k.expires_ts.filter(|_| k.state == "expired"));
    let cut = |t: Option<i64>, fallback: i64| t.unwrap_or(fallback);
    let next_end = cut(k.activated_ts, cut(end_of_life, now));
    out.push(Segment {
        phase: "next",
        from: k.created_ts,
        to: next_end,
    });
    if let Some(a) = k.activated_ts {
        let active_end = cut(k.rotated_ts, cut(k.revoked_ts, now));
        out.push(Segment {
            phase: "active",
            from: a,
            to: active_end,
        });
    }
    if let Some(r) = k.rotated_ts {
        let published_end = match (k.revoked_ts, k.expires_ts) {
            (Some(rv), _) => rv,
            (None, Some(e)) => e,
            (None, None) => now,
        };
        out.push(Segment {
            phase: "rotated",
            from: r,
            to: published_end,
        });
    }
    out.retain(|s| s.to > s.from);
    out
}

#[component]
pub fn Timeline(page: KeysPage) -> impl IntoView {
    let now = page.now_ts;
    let start = page.keys.iter().map(|k| k.created_ts).min().unwrap_or(now);
    let end = page
        .keys
        .iter()
        .filter(|k| k.state != "expired" && k.state != "revoked")
        .filter_map(|k| k.expires_ts)
        .chain(page.next_rotation_ts)
        .chain([now])
        .max()
        .unwrap_or(now);
    // Some room on both sides, and never a zero-width range.
    let span = (end - start).max(3600);
    let (t0, t1) = (start - span / 20, end + span / 20);
    let x = move |t: i64| LABEL + (WIDTH - LABEL - 10.0) * ((t - t0) as f64 / (t1 - t0) as f64);

    let mut rows = Vec::new();
    let mut y = HEADER;
    for alg in &page.algorithms {
        let keys: Vec<&KeyView> = page
            .keys
            .iter()
            .filter(|k| &k.alg == alg && k.state != "expired")
            .collect();
        rows.push(
            view! {
                <text class="tl-alg" x="4" y=format!("{:.0}", y + 12.0)>{alg.clone()}</text>
            }
            .into_any(),
        );
        y += LANE;
        let mut keys = keys;
        keys.sort_by_key(|k| k.created_ts);
        for k in keys {
            let label = format!("{}…", k.kid.chars().take(10).collect::<String>());
            let mut bars = Vec::new();
            for s in segments(k, now) {
                let (x0, x1) = (x(s.from), x(s.to));
                let tip = format!("{} {}: {}", k.alg, k.kid, s.phase);
                bars.push(view! {
                    <rect class=format!("tl-{}", s.phase) x=format!("{x0:.1}") y=format!("{:.1}", y + 2.0)
                        width=format!("{:.1}", (x1 - x0).max(2.0)) height=format!("{:.1}", LANE - 4.0) rx="3">
                        <title>{tip}</title>
                    </rect>
                });
            }
            let revoked = k.revoked_ts.map(|r| {
                let xr = x(r);
                view! {
                    <line class="tl-revoked" x1=format!("{xr:.1}") x2=format!("{xr:.1}")
                        y1=format!("{:.1}", y) y2=format!("{:.1}", y + LANE) />
                }
            });
            rows.push(
                view! {
                    <g class="tl-key" data-kid=k.kid.clone() data-state=k.state.clone()>
                        <text class="tl-kid" x="14" y=format!("{:.0}", y + 13.0)>{label}</text>
                        {bars}
                        {revoked}
                    </g>
                }
                .into_any(),
            );
            y += LANE;
        }
        y += GAP;
    }
    let height = y + 6.0;
    let now_x = x(now);
    let next_marker = page.next_rotation_ts.map(|t| {
        let xn = x(t);
        view! {
            <line class="tl-next-rotation" x1=format!("{xn:.1}") x2=format!("{xn:.1}") y1="14" y2=format!("{height:.0}") />
            <text class="tl-caption" x=format!("{:.1}", xn + 3.0) y="12">"next rotation"</text>
        }
    });
    let description = format!(
        "Timeline of {} keys across {} algorithms, from {} to {}",
        page.keys.iter().filter(|k| k.state != "expired").count(),
        page.algorithms.len(),
        fmt(t0),
        fmt(t1)
    );
    view! {
        <figure class="card timeline">
            <figcaption>
                <strong>"Lifecycle"</strong>
                <span class="legend">
                    <span class="legend-item"><span class="swatch tl-next"></span>"next (published, not signing)"</span>
                    <span class="legend-item"><span class="swatch tl-active"></span>"active (signing)"</span>
                    <span class="legend-item"><span class="swatch tl-rotated"></span>"rotated (verifying until retention ends)"</span>
                    <span class="legend-item"><span class="swatch tl-revoked-swatch"></span>"revoked"</span>
                </span>
            </figcaption>
            <svg viewBox=format!("0 0 {WIDTH} {height:.0}") role="img" aria-label=description
                preserveAspectRatio="xMinYMin meet">
                <line class="tl-now" x1=format!("{now_x:.1}") x2=format!("{now_x:.1}") y1="14" y2=format!("{height:.0}") />
                <text class="tl-caption" x=format!("{:.1}", now_x + 3.0) y="12">"now"</text>
                {next_marker}
                {rows}
            </svg>
        </figure>
    }
}

fn fmt(ts: i64) -> String {
    chrono::DateTime::from_timestamp(ts, 0)
        .map(crate::domain::time::format_utc_minutes)
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(
        state: &str,
        created: i64,
        activated: Option<i64>,
        rotated: Option<i64>,
        revoked: Option<i64>,
        expires: Option<i64>,
    ) -> KeyView {
        KeyView {
            kid: "k".into(),
            alg: "EdDSA".into(),
            state: state.into(),
            created_at: String::new(),
            activated_at: None,
            rotated_at: None,
            revoked_at: None,
            expires_at: None,
            revoke_reason: None,
            jwk: String::new(),
            held_in: "software".into(),
            created_ts: created,
            activated_ts: activated,
            rotated_ts: rotated,
            revoked_ts: revoked,
            expires_ts: expires,
        }
    }

    fn phases(s: &[Segment]) -> Vec<(&str, i64, i64)> {
        s.iter().map(|s| (s.phase, s.from, s.to)).collect()
    }

    #[test]
    fn a_rotated_key_shows_all_three_phases_up_to_its_expiry() {
        let k = key("rotated", 0, Some(10), Some(20), None, Some(50));
        assert_eq!(
            phases(&segments(&k, 30)),
            [("next", 0, 10), ("active", 10, 20), ("rotated", 20, 50)]
        );
    }

    #[test]
    fn live_keys_run_to_now_and_revoked_keys_stop_at_revocation() {
        assert_eq!(
            phases(&segments(&key("next", 5, None, None, None, None), 30)),
            [("next", 5, 30)]
        );
        assert_eq!(
            phases(&segments(&key("active", 0, Some(10), None, None, None), 30)),
            [("next", 0, 10), ("active", 10, 30)]
        );
        assert_eq!(
            phases(&segments(
                &key("revoked", 0, Some(10), None, Some(15), None),
                30
            )),
            [("next", 0, 10), ("active", 10, 15)]
        );
        assert_eq!(
            phases(&segments(&key("revoked", 0, None, None, Some(4), None), 30)),
            [("next", 0, 4)]
        );
    }
}
