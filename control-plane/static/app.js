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
