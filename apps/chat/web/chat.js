// The browser chat's page: workerman-chat's JSON protocol (docs/chat.md) over the
// WebSocket of the page's own origin. No external resources; user text only ever goes
// into the page as text (textContent), never as HTML.
'use strict';

(function () {
  const room = new URLSearchParams(location.search).get('room_id') || '1';
  const $ = (id) => document.getElementById(id);

  let ws = null;
  let name = null;          // the name we log in with, once chosen
  let myId = null;          // our client id on the current connection
  let joinedOnce = false;   // a login succeeded on an earlier connection
  let attempts = 0;         // reconnect attempts since the last successful login
  let retriesTaken = 0;     // logins refused as "name taken" after a reconnect
  let target = 'all';       // whom `say` goes to
  let members = new Map();  // client id -> name (as text)
  let early = [];           // room events that came before our own login answer

  // What the server sends is escaped HTML, as the original front end wants it: the
  // five entities, `<br />` before line breaks and our `<b>prefix: </b>` of private
  // messages. Turn it back into text; anything else stays literal text.
  const ENTITIES = { lt: '<', gt: '>', quot: '"', '#039': "'", '#39': "'", amp: '&' };
  function unescape(html) {
    return String(html).replace(/&(lt|gt|quot|#0?39|amp);/g, (_, e) => ENTITIES[e]);
  }
  function htmlToText(html) {
    let s = String(html);
    let prefix = '';
    const b = /^<b>(.*?)<\/b>/.exec(s);
    if (b) {
      prefix = unescape(b[1]).trim();
      s = s.slice(b[0].length);
    }
    return { prefix, text: unescape(s.replace(/<br \/>/g, '')) };
  }

  function setStatus(kind, text) {
    const el = $('status');
    el.className = 'status ' + kind;
    el.textContent = text;
  }

  // ---- messages -------------------------------------------------------------------

  function atBottom(box) {
    return box.scrollHeight - box.scrollTop - box.clientHeight < 40;
  }

  function append(li) {
    const box = document.querySelector('.messages');
    const stick = atBottom(box);
    $('messages').appendChild(li);
    if (stick) box.scrollTop = box.scrollHeight;
  }

  function said(m, extraClass) {
    const li = document.createElement('li');
    if (extraClass) li.classList.add(extraClass);
    const meta = document.createElement('div');
    meta.className = 'meta';
    const who = document.createElement('span');
    who.className = 'who';
    who.textContent = unescape(m.from_client_name);
    const when = document.createElement('time');
    when.textContent = m.time + ' UTC';
    meta.append(who, when);
    const body = document.createElement('div');
    body.className = 'text';
    const { prefix, text } = htmlToText(m.content);
    if (m.to_client_id && m.to_client_id !== 'all') {
      li.classList.add('private');
      const tag = document.createElement('span');
      tag.className = 'tag';
      tag.textContent = prefix || 'privately:';
      body.appendChild(tag);
    }
    body.appendChild(document.createTextNode(text));
    li.append(meta, body);
    append(li);
  }

  function notice(text, bad) {
    const li = document.createElement('li');
    li.className = 'notice' + (bad ? ' bad' : '');
    li.textContent = text;
    append(li);
  }

  function divider(text) {
    const li = document.createElement('li');
    li.className = 'divider';
    const span = document.createElement('span');
    span.textContent = text;
    li.appendChild(span);
    append(li);
  }

  // ---- members --------------------------------------------------------------------

  function renderMembers() {
    if (target !== 'all' && !members.has(target)) target = 'all';
    const list = $('members');
    const select = $('to');
    list.replaceChildren();
    select.replaceChildren(new Option('everybody', 'all'));
    const sorted = [...members].sort((a, b) => a[1].localeCompare(b[1]));
    for (const [id, who] of sorted) {
      const li = document.createElement('li');
      const button = document.createElement('button');
      button.type = 'button';
      button.dataset.id = id;
      if (id === myId) {
        button.textContent = who + ' (you)';
        button.classList.add('me');
        button.disabled = true;
      } else {
        button.textContent = who;
        button.title = 'Send ' + who + ' a private message';
        if (id === target) button.classList.add('chosen');
        button.addEventListener('click', () => choose(target === id ? 'all' : id));
        select.appendChild(new Option(who, id));
      }
      li.appendChild(button);
      list.appendChild(li);
    }
    select.value = target;
    $('count').textContent = '(' + members.size + ')';
  }

  function choose(id) {
    target = id;
    renderMembers();
    $('text').focus();
  }

  // ---- protocol -------------------------------------------------------------------

  function send(message) {
    if (ws && ws.readyState === WebSocket.OPEN) {
      ws.send(JSON.stringify(message));
      return true;
    }
    return false;
  }

  function login() {
    myId = null;
    early = [];
    send({ type: 'login', client_name: name, room_id: room });
  }

  function onLogin(m) {
    const who = unescape(m.client_name);
    if (m.client_list) {
      // Our own login: the room as it is, plus whoever came or went meanwhile.
      myId = m.client_id;
      members = new Map(Object.entries(m.client_list).map(([id, n]) => [id, unescape(n)]));
      for (const e of early) {
        if (e.type === 'login') members.set(e.client_id, unescape(e.client_name));
        else members.delete(e.from_client_id);
      }
      early = [];
      attempts = 0;
      retriesTaken = 0;
      showChat();
      notice(joinedOnce ? 'Reconnected as ' + who + '.' : 'You joined room ' + room + ' as ' + who + '.');
      joinedOnce = true;
      setStatus('online', 'online');
    } else if (myId === null) {
      early.push(m);
      return;
    } else {
      members.set(m.client_id, who);
      notice(who + ' joined.');
    }
    renderMembers();
  }

  function onLogout(m) {
    if (myId === null) {
      early.push(m);
      return;
    }
    members.delete(m.from_client_id);
    notice(unescape(m.from_client_name) + ' left.');
    renderMembers();
  }

  function onHistory(m) {
    // After a reconnect the page already shows what was said.
    if (joinedOnce || !Array.isArray(m.messages) || m.messages.length === 0) return;
    divider('earlier in this room');
    for (const said_ of m.messages) said(said_, 'history');
    divider('now');
  }

  function onError(m) {
    if (m.code === 101 && joinedOnce && retriesTaken < 5) {
      // After a reconnect: our old connection, if the server still held it, is
      // replaced unless it answered the server's ping (docs/chat.md); then try again.
      retriesTaken += 1;
      setTimeout(login, 1000);
      return;
    }
    if (m.code === 101 || (m.code === 102 && myId === null)) {
      // The name cannot be used: ask for another.
      name = null;
      showLogin(m.msg);
      return;
    }
    notice(m.msg, true);
  }

  function onMessage(event) {
    let m;
    try {
      m = JSON.parse(event.data);
    } catch (e) {
      return;
    }
    switch (m && m.type) {
      case 'ping': send({ type: 'pong' }); break;
      case 'login': onLogin(m); break;
      case 'logout': onLogout(m); break;
      case 'say': said(m); break;
      case 'history': onHistory(m); break;
      case 'error': onError(m); break;
      default: break;
    }
  }

  // ---- connection -----------------------------------------------------------------

  function connect() {
    setStatus('connecting', 'connecting…');
    const scheme = location.protocol === 'https:' ? 'wss://' : 'ws://';
    ws = new WebSocket(scheme + location.host + '/');
    ws.onopen = () => {
      if (name) setStatus('connecting', 'logging in…');
      else setStatus('online', 'connected');
      if (name) login();
    };
    ws.onmessage = onMessage;
    ws.onclose = () => {
      ws = null;
      myId = null;
      // Back off: 0.5 s, 1 s, 2 s, … up to 10 s, until a login succeeds again.
      const delay = Math.min(10000, 500 * Math.pow(2, attempts));
      attempts += 1;
      setStatus('offline', 'offline, reconnecting in ' + Math.ceil(delay / 1000) + ' s…');
      setTimeout(connect, delay);
    };
  }

  // ---- page -----------------------------------------------------------------------

  function showLogin(error) {
    $('chat').hidden = true;
    $('login').hidden = false;
    const err = $('login-error');
    err.hidden = !error;
    err.textContent = error || '';
    const input = $('name');
    if (!input.value) input.value = sessionStorage.getItem('chat-name') || '';
    input.focus();
  }

  function showChat() {
    $('login').hidden = true;
    $('chat').hidden = false;
  }

  $('login').addEventListener('submit', (e) => {
    e.preventDefault();
    const chosen = $('name').value.trim();
    if (!chosen) return;
    name = chosen;
    sessionStorage.setItem('chat-name', name);
    if (!loginIfOpen()) setStatus('connecting', 'connecting…');
  });

  function loginIfOpen() {
    if (ws && ws.readyState === WebSocket.OPEN) {
      login();
      return true;
    }
    return false;
  }

  $('to').addEventListener('change', (e) => choose(e.target.value));

  $('say').addEventListener('submit', (e) => {
    e.preventDefault();
    const input = $('text');
    const content = input.value;
    if (!content.trim()) return;
    const to_client_name = target === 'all' ? 'all' : members.get(target) || '';
    if (send({ type: 'say', to_client_id: target, to_client_name, content })) {
      input.value = '';
    } else {
      notice('Not connected: your message was not sent (it is still in the box).', true);
    }
    input.focus();
  });

  $('text').addEventListener('keydown', (e) => {
    if (e.key === 'Enter' && !e.shiftKey && !e.isComposing) {
      e.preventDefault();
      $('say').requestSubmit();
    }
  });

  $('room').textContent = 'room ' + room;
  document.title = 'Switchboard chat · room ' + room;
  showLogin();
  connect();
})();
