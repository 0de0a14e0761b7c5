// The live page of realmnet's debug endpoint: it reads the JSON API every
// second and renders it. Every text goes in with textContent (never
// innerHTML), so nothing the node reports can become markup.
//
// Hooks for tests: every peer ID element has data-peer="<id>", every path row
// data-path="<conn id>", every realm data-realm="<name>".
'use strict';

(function () {
  const refreshMs = 1000;
  const maxEvents = 200;

  // The token the page was opened with (?token=...), sent on every fetch.
  const token = new URLSearchParams(window.location.search).get('token');

  // el makes an element: attrs sets className ("class"), data-* attributes
  // ("data" object) and title; children are nodes or strings (text).
  function el(tag, attrs, ...children) {
    const e = document.createElement(tag);
    if (attrs) {
      if (attrs.class) e.className = attrs.class;
      if (attrs.title) e.title = attrs.title;
      if (attrs.data) {
        for (const [k, v] of Object.entries(attrs.data)) e.dataset[k] = v;
      }
    }
    for (const c of children) {
      if (c === null || c === undefined) continue;
      e.append(c instanceof Node ? c : document.createTextNode(String(c)));
    }
    return e;
  }

  function td(attrs, ...children) { return el('td', attrs, ...children); }

  // peerID renders a peer ID in a tag element (default span): abbreviated
  // unless full is true, the whole ID in its title.
  function peerID(id, tag, full) {
    if (!id) return el(tag || 'span', { class: 'muted' }, '—');
    return el(tag || 'span', { class: 'id', title: id, data: { peer: id } }, full ? id : shortID(id));
  }

  function shortID(id) {
    return id.length > 20 ? id.slice(0, 8) + '…' + id.slice(-6) : id;
  }

  function badge(text, kind) {
    return el('span', { class: 'badge ' + (kind || text) }, text);
  }

  // Zero times arrive as year 1.
  function isZeroTime(t) { return !t || t.startsWith('0001-01-01'); }

  function clock(t) {
    if (isZeroTime(t)) return '—';
    const d = new Date(t);
    return d.toLocaleTimeString(undefined, { hour12: false }) + '.' + String(d.getMilliseconds()).padStart(3, '0');
  }

  function dateTime(t) {
    if (isZeroTime(t)) return '—';
    return new Date(t).toLocaleString(undefined, { hour12: false });
  }

  function ms(v) { return v > 0 ? v.toFixed(1) : '—'; }

  function duration(seconds) {
    let s = Math.floor(seconds);
    const d = Math.floor(s / 86400); s %= 86400;
    const h = Math.floor(s / 3600); s %= 3600;
    const m = Math.floor(s / 60); s %= 60;
    const parts = [];
    if (d) parts.push(d + 'd');
    if (d || h) parts.push(h + 'h');
    if (d || h || m) parts.push(m + 'm');
    parts.push(s + 's');
    return parts.join(' ');
  }

  function bytes(n) {
    const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
    let i = 0;
    while (n >= 1024 && i < units.length - 1) { n /= 1024; i++; }
    return (i === 0 ? String(n) : n.toFixed(1)) + ' ' + units[i];
  }

  function percent(v) { return (v * 100).toFixed(1) + ' %'; }

  // meter is a small bar for a value in [0, 1].
  function meter(v) {
    const fill = el('span', { class: 'meter-fill' });
    fill.style.width = Math.max(0, Math.min(1, v)) * 100 + '%';
    fill.classList.add(v >= 0.7 ? 'good' : v >= 0.4 ? 'fair' : 'poor');
    return el('span', { class: 'meter', title: v.toFixed(3) }, fill);
  }

  function list(items, render) {
    if (!items || items.length === 0) return el('span', { class: 'muted' }, '—');
    const span = el('span', { class: 'list' });
    items.forEach((item) => span.append(render ? render(item) : el('span', { class: 'tag' }, item)));
    return span;
  }

  function renderNode(n) {
    const dl = document.getElementById('node');
    const row = (name, value) => [el('dt', null, name), el('dd', null, value)];
    const addrs = (a) => list(a, (x) => el('span', { class: 'addr' }, x));
    dl.replaceChildren(
      ...row('ID', peerID(n.id, 'span', true)),
      ...row('Version', n.version || '—'),
      ...row('Reachability', badge(n.reachability || 'Unknown', 'reach-' + (n.reachability || 'Unknown').toLowerCase())),
      ...row('Uptime', duration(n.uptime_seconds) + ' (since ' + dateTime(n.started) + ')'),
      ...row('Peers / conns / streams', n.peers + ' / ' + n.conns + ' / ' + n.streams),
      ...row('Listening on', addrs(n.listen_addrs)),
      ...row('Announcing', addrs(n.addrs)),
    );
  }

  function renderPeers(peers, paths) {
    const tbody = document.querySelector('#peers tbody');
    // Group the paths by peer; a path whose peer is not listed still shows.
    const byPeer = new Map();
    for (const p of paths) {
      if (!byPeer.has(p.peer)) byPeer.set(p.peer, []);
      byPeer.get(p.peer).push(p);
    }
    const rows = [];
    const listed = new Set();
    const sorted = [...peers].sort((a, b) => a.id.localeCompare(b.id));
    for (const peer of sorted) {
      listed.add(peer.id);
      rows.push(peerRow(peer));
      rows.push(pathsRow(byPeer.get(peer.id) || []));
    }
    for (const [id, ps] of byPeer) {
      if (listed.has(id)) continue;
      rows.push(peerRow({ id: id, connectedness: '?', paths: ps.length, selected_rtt_ms: 0, realms: [], pools: [], protected: false, health: null }));
      rows.push(pathsRow(ps));
    }
    if (rows.length === 0) {
      const cell = td({ class: 'muted empty' }, 'no peers');
      cell.colSpan = 9;
      rows.push(el('tr', null, cell));
    }
    tbody.replaceChildren(...rows);
    document.getElementById('peers-count').textContent = '(' + sorted.length + ')';
  }

  function peerRow(p) {
    const h = p.health;
    return el('tr', { class: 'peer' },
      peerID(p.id, 'td'),
      td(null, badge(p.connectedness, 'conn-' + p.connectedness.toLowerCase())),
      td({ class: 'num' }, p.paths),
      td({ class: 'num' }, ms(p.selected_rtt_ms)),
      td(null, list(p.realms)),
      td(null, list(p.pools)),
      td(null, p.protected ? badge('protected', 'protected') : ''),
      td(null, h ? badge(h.breaker, 'breaker-' + h.breaker) : '—'),
      td({ class: 'num' }, h ? meter(h.quality) : '—'),
    );
  }

  function pathsRow(paths) {
    const cell = el('td', { class: 'paths-cell' });
    cell.colSpan = 9;
    if (paths.length === 0) {
      cell.append(el('span', { class: 'muted' }, 'no paths'));
    } else {
      const head = el('tr', null, ...['', 'Conn', 'State', 'Tier', 'Dir', 'SRTT ms', 'Min ms', 'HB ms', 'Loss', 'Streams',
        'Sent', 'Received', 'Remote', 'Last heartbeat'].map((h) => el('th', null, h)));
      const body = [...paths]
        .sort((a, b) => (b.selected - a.selected) || a.conn_id.localeCompare(b.conn_id))
        .map(pathRow);
      cell.append(el('table', { class: 'paths' }, el('thead', null, head), el('tbody', null, ...body)));
    }
    return el('tr', { class: 'paths-row' }, cell);
  }

  function pathRow(p) {
    return el('tr', { class: 'path' + (p.selected ? ' selected' : ''), data: { path: p.conn_id } },
      td({ class: 'sel', title: p.selected ? 'selected path' : '' }, p.selected ? '★' : ''),
      td({ class: 'id' }, p.conn_id),
      td(null, badge(p.state, 'state-' + p.state)),
      td(null, badge(p.tier, 'tier-' + p.tier)),
      td(null, p.direction),
      td({ class: 'num' }, ms(p.smoothed_rtt_ms)),
      td({ class: 'num' }, ms(p.min_rtt_ms)),
      td({ class: 'num' }, ms(p.heartbeat_rtt_ms)),
      td({ class: 'num' }, percent(p.loss)),
      td({ class: 'num' }, p.open_streams),
      td({ class: 'num' }, bytes(p.bytes_sent)),
      td({ class: 'num' }, bytes(p.bytes_received)),
      td({ class: 'addr', title: 'local ' + p.local }, p.remote),
      td(null, clock(p.last_heartbeat)),
    );
  }

  function renderPools(pools) {
    const box = document.getElementById('pools');
    if (pools.length === 0) {
      box.replaceChildren(el('p', { class: 'muted' }, 'no pools'));
      return;
    }
    box.replaceChildren(...pools.map((p) => {
      // The bar's scale leaves room above HighWater.
      const scale = Math.max(p.high_water * 1.2, p.size, 1);
      const fill = el('span', { class: 'bar-fill ' + (p.size >= p.high_water ? 'full' : p.size >= p.low_water ? 'fair' : 'good') });
      fill.style.width = (100 * p.size / scale) + '%';
      const low = el('span', { class: 'mark low', title: 'low water ' + p.low_water });
      low.style.left = (100 * p.low_water / scale) + '%';
      const high = el('span', { class: 'mark high', title: 'high water ' + p.high_water });
      high.style.left = (100 * p.high_water / scale) + '%';
      return el('div', { class: 'pool', data: { pool: p.name } },
        el('div', { class: 'pool-name' }, p.name),
        el('div', { class: 'bar', title: p.size + ' of ' + p.high_water }, fill, low, high),
        el('div', { class: 'pool-numbers' },
          p.size + ' conns · low ' + p.low_water + ' · high ' + p.high_water +
          ' · trimmed ' + p.trimmed + ' · refused ' + p.refused),
      );
    }));
  }

  function renderRealms(realms) {
    const box = document.getElementById('realms');
    document.getElementById('realms-count').textContent = '(' + realms.length + ')';
    if (realms.length === 0) {
      box.replaceChildren(el('p', { class: 'muted' }, 'no realms joined'));
      return;
    }
    const sorted = [...realms].sort((a, b) => a.name.localeCompare(b.name));
    box.replaceChildren(...sorted.map((r) => {
      const members = r.members.length === 0
        ? el('p', { class: 'muted' }, 'no members')
        : el('table', { class: 'grid compact' },
          el('thead', null, el('tr', null, el('th', null, 'Member'), el('th', null, 'Since'), el('th', { class: 'num' }, 'Paths'))),
          el('tbody', null, ...r.members.map((m) => el('tr', null,
            peerID(m.peer, 'td'), td(null, dateTime(m.since)), td({ class: 'num' }, m.paths)))));
      return el('div', { class: 'realm', data: { realm: r.name } },
        el('h3', null, r.name, el('span', { class: 'hint' }, ' joined ' + dateTime(r.joined) + ' · ' + r.members.length + (r.members.length === 1 ? ' member' : ' members'))),
        members);
    }));
  }

  function renderHealth(health) {
    const tbody = document.querySelector('#health tbody');
    if (health.length === 0) {
      const cell = td({ class: 'muted empty' }, 'no peers tracked');
      cell.colSpan = 5;
      tbody.replaceChildren(el('tr', null, cell));
      return;
    }
    tbody.replaceChildren(...health.map((h) => el('tr', null,
      peerID(h.peer, 'td'),
      td(null, badge(h.breaker, 'breaker-' + h.breaker)),
      td(null, h.open_until ? clock(h.open_until) : '—'),
      td({ class: 'num' }, meter(h.quality), ' ', h.quality.toFixed(2)),
      td({ class: 'num' }, h.recent_failures),
    )));
  }

  function renderEvents(events) {
    const tbody = document.querySelector('#events tbody');
    if (events.length === 0) {
      const cell = td({ class: 'muted empty' }, 'no events');
      cell.colSpan = 4;
      tbody.replaceChildren(el('tr', null, cell));
      return;
    }
    const recent = events.slice(-maxEvents).reverse();
    tbody.replaceChildren(...recent.map((e) => el('tr', null,
      td({ class: 'time' }, clock(e.at)),
      td(null, el('span', { class: 'tag' }, e.type)),
      e.peer ? peerID(e.peer, 'td') : td({ class: 'muted' }, '—'),
      td(null, e.text),
    )));
  }

  // get fetches one API path and decodes it; it throws with the server's
  // error text.
  async function get(path) {
    const headers = token ? { Authorization: 'Bearer ' + token } : {};
    const response = await fetch(path, { headers: headers, cache: 'no-store' });
    if (!response.ok) {
      let text = response.statusText;
      try { text = (await response.json()).error || text; } catch (e) { /* not JSON */ }
      throw new Error(path + ': ' + response.status + ' ' + text);
    }
    return response.json();
  }

  function setStatus(text, ok) {
    const s = document.getElementById('status');
    s.textContent = text;
    s.className = 'status ' + (ok ? 'ok' : 'error');
  }

  async function refresh() {
    try {
      // Relative paths, so the page also works under a prefix.
      const [node, peers, paths, pools, realms, events, health] = await Promise.all(
        ['v1/node', 'v1/peers', 'v1/paths', 'v1/pools', 'v1/realms', 'v1/events', 'v1/health'].map(get));
      renderNode(node);
      renderPeers(peers, paths);
      renderPools(pools);
      renderRealms(realms);
      renderHealth(health);
      renderEvents(events);
      document.title = 'realmnet ' + shortID(node.id);
      setStatus('updated ' + new Date().toLocaleTimeString(undefined, { hour12: false }), true);
    } catch (err) {
      setStatus(String(err.message || err), false);
    } finally {
      setTimeout(refresh, refreshMs);
    }
  }

  refresh();
})();
