// The HTML timeline's zoom, pan, axis, bunches of marks and tooltips. Inlined into the page
// by thread_observer/timeline/html.py: the page works offline, with nothing to fetch.
//
// Lanes sit in rows grouped by executor under heading rows (class "group", drawn once): a
// call's data-row is its lane's row among all rows. Every lane and call carries its times (ns
// since the start) in data-s and data-e; the picture is laid out again for the visible window
// on every zoom or pan. Calls of one thread that follow each other closer than BUNCH_PX pixels
// at the current zoom are one bunch with a "×N" label, so marks that overlap when zoomed out
// separate as one zooms in (and two labels never sit on each other: bunches are at least
// BUNCH_PX apart).
"use strict";

(function () {
  const errors = document.getElementById("errors");
  window.addEventListener("error", (event) => {
    errors.hidden = false;
    errors.textContent += `script error: ${event.message}\n`;
  });

  const svg = document.getElementById("timeline");
  const config = JSON.parse(document.getElementById("timeline-config").textContent);
  const { label, plot, top, laneHeight, bottom, total, scale, unit } = config;
  const BUNCH_PX = 14; // about the width of a "×N" label
  const MIN_SPAN = Math.min(1000, total); // 1 µs: below that the clock says nothing more
  const NS = "http://www.w3.org/2000/svg";
  const height = top + laneHeight * config.rows + bottom; // rows: lanes and group headings
  const view = { from: config.from, to: config.to };
  const state = document.getElementById("view");
  const parts = {
    lanes: [...svg.querySelectorAll(".lane rect")],
    calls: [...svg.querySelectorAll(".call")],
    ticks: svg.getElementById("ticks"),
    bunches: svg.getElementById("bunches"),
  };

  function x(ns) {
    return label + (plot * (ns - view.from)) / (view.to - view.from);
  }

  function layout() {
    for (const rect of parts.lanes) {
      const start = x(+rect.dataset.s);
      const end = x(+rect.dataset.e);
      rect.setAttribute("x", start.toFixed(2));
      rect.setAttribute("width", Math.max(end - start, 2).toFixed(2));
    }
    for (const call of parts.calls) {
      const start = x(+call.dataset.s);
      call.setAttribute("x", start.toFixed(2));
      if (call.tagName === "rect") {
        call.setAttribute("width", Math.max(x(+call.dataset.e) - start, 2).toFixed(2));
      }
    }
    drawTicks();
    drawBunches();
    state.dataset.from = view.from;
    state.dataset.to = view.to;
    state.textContent = `showing ${format(view.from)} to ${format(view.to)} ${unit} ` +
      `of ${format(total)} ${unit} · wheel zooms, drag pans, double-click resets`;
  }

  function format(ns) {
    return +(ns / scale).toPrecision(4) + "";
  }

  function niceStep(span, count) {
    const raw = span / count;
    const power = Math.pow(10, Math.floor(Math.log10(raw)));
    return [1, 2, 5, 10].map((m) => m * power).find((step) => step >= raw);
  }

  function drawTicks() {
    parts.ticks.replaceChildren();
    const step = niceStep((view.to - view.from) / scale, 8) * scale;
    for (let t = Math.ceil(view.from / step) * step; t <= view.to; t += step) {
      const at = x(t).toFixed(1);
      const line = document.createElementNS(NS, "line");
      for (const [name, value] of [["x1", at], ["x2", at], ["y1", top - 6],
        ["y2", height - bottom], ["stroke", "#ddd"], ["stroke-dasharray", "3,3"]]) {
        line.setAttribute(name, value);
      }
      const text = document.createElementNS(NS, "text");
      text.setAttribute("x", at);
      text.setAttribute("y", height - bottom + 14);
      text.setAttribute("text-anchor", "middle");
      text.textContent = format(t);
      parts.ticks.append(line, text);
    }
  }

  function bunches() {
    const found = [];
    const last = new Map(); // row -> the bunch being grown on that lane
    const visible = parts.calls
      .filter((call) => +call.dataset.s >= view.from && +call.dataset.s <= view.to)
      .sort((a, b) => a.dataset.s - b.dataset.s);
    for (const call of visible) {
      const row = call.dataset.row;
      const bunch = last.get(row);
      if (bunch && x(+call.dataset.s) - x(+bunch[bunch.length - 1].dataset.s) <= BUNCH_PX) {
        bunch.push(call);
      } else {
        last.set(row, [call]);
        found.push(last.get(row));
      }
    }
    return found.filter((bunch) => bunch.length > 1);
  }

  function drawBunches() {
    parts.bunches.replaceChildren();
    const found = bunches();
    for (const bunch of found) {
      const failed = bunch.filter((call) => call.classList.contains("failed")).length;
      const text = document.createElementNS(NS, "text");
      text.setAttribute("class", "bunch");
      text.setAttribute("x", (x(+bunch[0].dataset.s) + 5).toFixed(2));
      text.setAttribute("y", top + bunch[0].dataset.row * laneHeight + 2);
      text.textContent = `×${bunch.length}` + (failed ? ` (${failed} failed)` : "");
      parts.bunches.append(text);
    }
    state.dataset.bunches = found.length;
  }

  // Zoom and pan: the window stays within the recording, and never narrower than MIN_SPAN.
  function setView(from, to) {
    let span = Math.min(Math.max(to - from, MIN_SPAN), total);
    from = Math.min(Math.max(from, 0), total - span);
    view.from = from;
    view.to = from + span;
    layout();
  }

  function zoom(factor, atPixel) {
    const at = view.from + ((atPixel - label) / plot) * (view.to - view.from);
    setView(at - (at - view.from) * factor, at + (view.to - at) * factor);
  }

  function pixelOf(event) {
    const box = svg.getBoundingClientRect();
    return ((event.clientX - box.left) * svg.width.baseVal.value) / box.width;
  }

  svg.addEventListener("wheel", (event) => {
    event.preventDefault();
    zoom(Math.exp(event.deltaY * 0.002), pixelOf(event));
  }, { passive: false });

  let drag = null;
  svg.addEventListener("mousedown", (event) => {
    drag = { pixel: pixelOf(event), from: view.from, to: view.to };
    svg.classList.add("dragging");
  });
  window.addEventListener("mousemove", (event) => {
    if (!drag) return;
    const shift = ((pixelOf(event) - drag.pixel) / plot) * (drag.to - drag.from);
    setView(drag.from - shift, drag.to - shift);
  });
  window.addEventListener("mouseup", () => {
    drag = null;
    svg.classList.remove("dragging");
  });
  svg.addEventListener("dblclick", () => setView(0, total));

  // Tooltips
  const tip = document.getElementById("tip");
  svg.addEventListener("mousemove", (event) => {
    const el = event.target.closest("[data-tip]");
    if (!el || drag) {
      tip.style.display = "none";
      return;
    }
    tip.textContent = el.dataset.tip;
    tip.style.display = "block";
    tip.style.left = event.clientX + 14 + "px";
    tip.style.top = event.clientY + 10 + "px";
  });
  svg.addEventListener("mouseleave", () => { tip.style.display = "none"; });

  layout();

  // A check a headless browser can run: timeline.html#wheel-check dispatches a real wheel
  // event over the middle of the plot, as a mouse would.
  if (location.hash === "#wheel-check") {
    const box = svg.getBoundingClientRect();
    const before = view.to - view.from;
    svg.dispatchEvent(new WheelEvent("wheel", {
      deltaY: -500, bubbles: true, cancelable: true,
      clientX: box.left + ((label + plot / 2) * box.width) / svg.width.baseVal.value,
      clientY: box.top + top + 4,
    }));
    state.dataset.zoomedFrom = before;
  }
})();
