"""Self-contained HTML compliance reports (PCI DSS v4.0 Req. 10, HIPAA 164.312(b)).

One HTML file, inline CSS and inline SVG charts, no external assets or scripts, so it
can be archived and opened offline. Every section names the requirement it evidences.
Every value from the log is HTML-escaped; sensitive fields (HMACs) are never shown.

Example::

    html = build_report(records, standard="pci-dss", integrity=IntegrityStatus(True, "OK ..."))
    Path("report.html").write_text(html)
"""

from __future__ import annotations

import dataclasses
import html
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Sequence
from datetime import UTC, datetime
from typing import Any

from insitu.audit.errors import AuditError

__all__ = ["STANDARDS", "IntegrityStatus", "build_report"]

Rec = dict[str, Any]


@dataclasses.dataclass(frozen=True)
class IntegrityStatus:
    ok: bool
    detail: str  # e.g. "OK 1234 entries, root ab12..." or the first failure


@dataclasses.dataclass(frozen=True)
class _Section:
    key: str
    title: str
    select: Callable[[Rec], bool]


_ADMIN_EVENTS = ("admin.", "site.enrol", "site.revoke", "token.create", "audit.prune", "key.")
_CRED_EVENTS = ("key.", "cert.", "token.", "site.enrol", "site.revoke")
_OBJECT_EVENTS = ("job.", "model.", "site.enrol", "site.revoke", "features.", "key.create")

STANDARDS: dict[str, dict[str, str]] = {
    "pci-dss": {
        "name": "PCI DSS v4.0, Requirement 10",
        "actors": "10.2.1.1 individual user access; 10.2.2 user identification, type, time, origin",
        "admin": "10.2.1.2 actions taken by any individual with administrative access",
        "audit": (
            "10.2.1.3 access to audit logs; "
            "10.2.1.6 initialization, stopping or pausing of audit logs"
        ),
        "denied": "10.2.1.4 invalid logical access attempts",
        "creds": "10.2.1.5 changes to identification and authentication credentials",
        "objects": "10.2.1.7 creation and deletion of system-level objects",
        "break_glass": "10.2.1.2 emergency use of elevated access (break-glass)",
        "integrity": "10.4.1.1 automated mechanisms for audit log review; 10.3.4 log integrity",
    },
    "hipaa": {
        "name": "HIPAA Security Rule, 45 CFR 164.312",
        "actors": "164.312(b) audit controls; 164.312(d) person or entity authentication",
        "admin": "164.312(b) audit controls: administrative activity",
        "audit": "164.312(b) audit controls: access to and operation of the audit log",
        "denied": (
            "164.312(b) audit controls; 164.308(a)(1)(ii)(D) information system activity review"
        ),
        "creds": "164.312(d) person or entity authentication: credential lifecycle",
        "objects": "164.312(b) audit controls: creation and deletion of system objects",
        "break_glass": "164.312(a)(2)(ii) emergency access procedure; 164.312(b)",
        "integrity": "164.312(c)(1) integrity; 164.312(b) audit controls (automated review)",
    },
}


def _starts(rec: Rec, prefixes: Sequence[str]) -> bool:
    et = str(rec.get("event_type", ""))
    return any(et == p or et.startswith(p) for p in prefixes)


def _actor(rec: Rec) -> str:
    a = rec.get("actor") or {}
    return str(a.get("spiffe_id") or f"(system: {a.get('auth_method', '?')})")


_SECTIONS = [
    _Section(
        "admin",
        "Administrative actions",
        lambda r: (
            _starts(r, _ADMIN_EVENTS)
            or str((r.get("actor") or {}).get("role") or "") in ("admin", "operator")
        ),
    ),
    _Section("audit", "Audit log access and lifecycle", lambda r: _starts(r, ("audit.",))),
    _Section(
        "denied", "Denied and failed attempts", lambda r: r.get("outcome") in ("denied", "failure")
    ),
    _Section("creds", "Key, certificate and credential events", lambda r: _starts(r, _CRED_EVENTS)),
    _Section(
        "objects", "System-level objects created or deleted", lambda r: _starts(r, _OBJECT_EVENTS)
    ),
    _Section(
        "break_glass",
        "Break-glass uses",
        lambda r: r.get("break_glass") is True or r.get("event_type") == "break_glass",
    ),
]

_CSS = """
body{font-family:system-ui,sans-serif;margin:2rem;color:#1d2330;max-width:1100px}
h1{font-size:1.5rem}
h2{font-size:1.15rem;margin-top:2rem;border-bottom:1px solid #d5dae3;padding-bottom:.3rem}
.req{display:inline-block;background:#eef2fb;color:#213a7a;border-radius:4px;
padding:.1rem .45rem;font-size:.8rem}
table{border-collapse:collapse;width:100%;font-size:.8rem;margin-top:.6rem}
th,td{border:1px solid #d5dae3;padding:.25rem .4rem;text-align:left;vertical-align:top}
th{background:#f4f6fa}.ok{color:#0a6b2d;font-weight:600}.bad{color:#a4161a;font-weight:600}
.muted{color:#5d6778;font-size:.8rem}svg text{font-size:11px;font-family:inherit}
"""


def _e(v: object) -> str:
    return html.escape(str(v), quote=True)


def _bar_chart(items: Sequence[tuple[str, int]], title: str) -> str:
    """Horizontal bars, one per (label, value); labels escaped inside SVG text."""
    if not items:
        return '<p class="muted">No data.</p>'
    w, bar_h, label_w = 760, 18, 330
    top = max(v for _, v in items) or 1
    h = bar_h * len(items) + 10
    parts = [
        f'<svg role="img" aria-label="{_e(title)}" width="{w}" height="{h}" viewBox="0 0 {w} {h}">'
    ]
    for i, (label, v) in enumerate(items):
        y = 5 + i * bar_h
        bw = int((w - label_w - 60) * v / top)
        short = label if len(label) <= 52 else label[:49] + "..."
        parts.append(f'<text x="0" y="{y + 12}">{_e(short)}</text>')
        parts.append(
            f'<rect x="{label_w}" y="{y + 2}" width="{bw}" height="{bar_h - 5}" fill="#3b5bdb"/>'
        )
        parts.append(f'<text x="{label_w + bw + 4}" y="{y + 12}">{v}</text>')
    parts.append("</svg>")
    return "".join(parts)


def _day_chart(recs: Iterable[Rec], title: str) -> str:
    per_day = Counter(str(r.get("time", ""))[:10] for r in recs)
    return _bar_chart(sorted(per_day.items()), title)


def _table(recs: Sequence[Rec], limit: int = 200) -> str:
    cols = (
        "seq",
        "time",
        "event_type",
        "actor",
        "action",
        "resource",
        "outcome",
        "reason_code",
        "origin",
    )
    rows = []
    for r in recs[:limit]:
        res = r.get("resource") or {}
        org = r.get("origin") or {}
        vals = [
            r.get("seq"),
            r.get("time"),
            r.get("event_type"),
            _actor(r),
            r.get("action"),
            f"{res.get('type', '')}:{res.get('id', '')}",
            r.get("outcome"),
            r.get("reason_code") or "",
            f"{org.get('node', '')} {org.get('peer') or ''}".strip(),
        ]
        rows.append("<tr>" + "".join(f"<td>{_e(v)}</td>" for v in vals) + "</tr>")
    more = f'<p class="muted">{len(recs) - limit} more not shown.</p>' if len(recs) > limit else ""
    head = "".join(f"<th>{c}</th>" for c in cols)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(rows)}</tbody></table>{more}"


def _actors_section(recs: Sequence[Rec], req: str) -> str:
    by: dict[str, Counter[str]] = defaultdict(Counter)
    for r in recs:
        by[_actor(r)][str(r.get("outcome"))] += 1
    ranked = sorted(by.items(), key=lambda kv: -sum(kv[1].values()))
    chart = _bar_chart([(a, sum(c.values())) for a, c in ranked[:20]], "events per actor")
    rows = "".join(
        f"<tr><td>{_e(a)}</td>"
        + "".join(f"<td>{c[k]}</td>" for k in ("success", "failure", "denied"))
        + "</tr>"
        for a, c in ranked
    )
    head = "<tr><th>actor</th><th>success</th><th>failure</th><th>denied</th></tr>"
    table = f"<table>{head}{rows}</table>"
    return f'<h2>Access per actor</h2><span class="req">{_e(req)}</span>{chart}{table}'


def _in_period(rec: Rec, since: datetime | None, until: datetime | None) -> bool:
    t = str(rec.get("time", ""))
    if since is not None and t < since.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ"):
        return False
    return not (until is not None and t >= until.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ"))


def build_report(
    records: Iterable[Rec],
    *,
    standard: str,
    integrity: IntegrityStatus,
    since: datetime | None = None,
    until: datetime | None = None,
    title: str = "insitu audit report",
    generated_at: datetime | None = None,
) -> str:
    """The report as one HTML string."""
    if standard not in STANDARDS:
        raise AuditError(f"unknown standard '{standard}' (choose {', '.join(STANDARDS)})")
    std = STANDARDS[standard]
    recs = [r for r in records if isinstance(r, dict) and _in_period(r, since, until)]
    gen = (generated_at or datetime.now(UTC)).strftime("%Y-%m-%d %H:%M:%S UTC")
    start = since.isoformat() if since else "start of log"
    period = f"{start} to {until.isoformat() if until else 'end of log'}"
    status_cls, status_txt = ("ok", "VERIFIED") if integrity.ok else ("bad", "FAILED")
    out = [
        '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">',
        f"<title>{_e(title)}</title><style>{_CSS}</style></head><body>",
        f"<h1>{_e(title)}: {_e(std['name'])}</h1>",
        f'<p class="muted">Period: {_e(period)}. Generated {_e(gen)}. {len(recs)} events.</p>',
        f'<h2>Log integrity</h2><span class="req">{_e(std["integrity"])}</span>',
        f'<p class="{status_cls}">{status_txt}</p><p>{_e(integrity.detail)}</p>',
        _actors_section(recs, std["actors"]),
    ]
    for sec in _SECTIONS:
        sel = [r for r in recs if sec.select(r)]
        out.append(f'<h2>{_e(sec.title)}</h2><span class="req">{_e(std[sec.key])}</span>')
        out.append(f"<p>{len(sel)} events.</p>")
        if sel and sec.key in ("denied", "break_glass", "admin"):
            out.append(_day_chart(sel, f"{sec.title} per day"))
        out.append(_table(sel) if sel else "")
    out.append("</body></html>")
    return "\n".join(out)
