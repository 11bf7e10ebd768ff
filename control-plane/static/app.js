// Gantry dashboard: the only script. It asks before an action form is sent, and lets a drag across a zoomable
// chart narrow the page's time range. Every page works without it.
"use strict";

document.addEventListener("submit", (event) => {
  const form = event.target;
  const question = form.getAttribute("data-confirm");
  if (question && !window.confirm(question)) {
    event.preventDefault();
  }
});

function zoomable(svg) {
  const fromMs = Number(svg.dataset.fromMs);
  const toMs = Number(svg.dataset.toMs);
  const left = Number(svg.dataset.left);
  const plotWidth = Number(svg.dataset.plotWidth);
  const width = Number(svg.dataset.width);
  let start = null;
  let selection = null;
  const plotX = (event) => {
    const box = svg.getBoundingClientRect();
    const x = (event.clientX - box.left) / box.width * width;
    return Math.min(Math.max(x, left), left + plotWidth);
  };
  const toTime = (x) => Math.round(fromMs + (x - left) / plotWidth * (toMs - fromMs));
  svg.addEventListener("mousedown", (event) => {
    start = plotX(event);
    selection = document.createElementNS("http://www.w3.org/2000/svg", "rect");
    selection.setAttribute("class", "selection");
    selection.setAttribute("y", "0");
    selection.setAttribute("height", svg.viewBox.baseVal.height);
    selection.setAttribute("x", start);
    selection.setAttribute("width", "0");
    svg.appendChild(selection);
    event.preventDefault();
  });
  svg.addEventListener("mousemove", (event) => {
    if (start === null) return;
    const x = plotX(event);
    selection.setAttribute("x", Math.min(x, start));
    selection.setAttribute("width", Math.abs(x - start));
  });
  window.addEventListener("mouseup", (event) => {
    if (start === null) return;
    const end = plotX(event);
    const [a, b] = [Math.min(start, end), Math.max(start, end)];
    start = null;
    selection.remove();
    if (b - a < 3) return;
    const url = new URL(window.location.href);
    url.searchParams.set("from", new Date(toTime(a)).toISOString());
    url.searchParams.set("to", new Date(toTime(b)).toISOString());
    url.searchParams.delete("cursor");
    window.location.assign(url.toString());
  });
}

document.querySelectorAll("svg.zoomable").forEach(zoomable);

// The live tail of the logs page: server-sent events of new lines, rendered a frame at a time (at most 1,000 rows
// kept), closed while the tab is hidden and reopened when it shows again. Rows are built with textContent only.
function liveTail(button) {
  const list = document.getElementById("tail");
  const status = document.getElementById("tail-status");
  const MAX_ROWS = 1000;
  let source = null;
  let wanted = false;
  let queue = [];
  let scheduled = false;
  let received = 0;
  let truncated = false;
  let rateTimer = null;

  const row = (line) => {
    const li = document.createElement("li");
    li.className = "log sev-" + String(line.s || "").toLowerCase();
    const time = document.createElement("time");
    time.textContent = line.t;
    const sev = document.createElement("span");
    sev.className = "sev";
    sev.textContent = " " + line.s + " ";
    const svc = document.createElement("a");
    svc.className = "svc";
    svc.href = "/services/" + encodeURIComponent(line.v);
    svc.textContent = line.v;
    const body = document.createElement("span");
    body.className = "body";
    body.textContent = " " + line.b;
    li.append(time, sev, svc, body);
    if (line.r) {
      const trace = document.createElement("a");
      trace.className = "trace-link";
      trace.href = "/traces/" + encodeURIComponent(line.r);
      trace.textContent = " trace";
      li.append(trace);
    }
    return li;
  };

  const flush = () => {
    scheduled = false;
    const events = queue;
    queue = [];
    const fragment = document.createDocumentFragment();
    let rows = 0;
    for (let e = events.length - 1; e >= 0 && rows < MAX_ROWS; e--) {
      for (const line of events[e]) {
        if (rows++ >= MAX_ROWS) break;
        fragment.append(row(line));
      }
    }
    list.prepend(fragment);
    while (list.childElementCount > MAX_ROWS) list.lastElementChild.remove();
  };

  const open = () => {
    if (source) return;
    source = new EventSource(button.dataset.url);
    source.onmessage = (message) => {
      const data = JSON.parse(message.data);
      received += data.lines.length;
      truncated = truncated || data.truncated;
      queue.push(data.lines);
      if (!scheduled) {
        scheduled = true;
        window.requestAnimationFrame(flush);
      }
    };
    source.addEventListener("error", (event) => {
      if (event.data) status.textContent = "tail: " + event.data;
    });
    rateTimer = window.setInterval(() => {
      status.textContent = "live · " + received + " lines/s" + (truncated ? " · some lines skipped (over 2,000/s): narrow the query" : "");
      received = 0;
      truncated = false;
    }, 1000);
    status.textContent = "live";
  };

  const close = (why) => {
    if (source) source.close();
    source = null;
    if (rateTimer) window.clearInterval(rateTimer);
    rateTimer = null;
    status.textContent = why;
  };

  button.addEventListener("click", () => {
    wanted = !wanted;
    list.hidden = !wanted;
    button.textContent = wanted ? "Stop live tail" : "Live tail";
    if (wanted) open(); else close("");
  });
  document.addEventListener("visibilitychange", () => {
    if (!wanted) return;
    if (document.hidden) close("paused while the tab is hidden"); else open();
  });
}

const tailButton = document.getElementById("live-toggle");
if (tailButton) liveTail(tailButton);
