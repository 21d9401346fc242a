// Keyboard shortcuts and image zoom for the binaudit console (no framework, no inline code).
(function () {
  "use strict";
  function typing(ev) {
    var t = ev.target;
    return t && (t.tagName === "INPUT" || t.tagName === "TEXTAREA" || t.tagName === "SELECT");
  }
  function go(el) { if (el && el.href) { window.location.href = el.href; } }

  document.addEventListener("DOMContentLoaded", function () {
    // Queue: click a row to open it; j/k move the selection, Enter opens.
    var rows = Array.prototype.slice.call(document.querySelectorAll("table.queue tbody tr[data-href]"));
    var sel = -1;
    rows.forEach(function (row) {
      row.addEventListener("click", function (ev) {
        if (ev.target.tagName !== "A") { window.location.href = row.dataset.href; }
      });
    });
    function select(i) {
      if (!rows.length) { return; }
      if (sel >= 0) { rows[sel].classList.remove("selected"); }
      sel = Math.max(0, Math.min(rows.length - 1, i));
      rows[sel].classList.add("selected");
      rows[sel].scrollIntoView({ block: "nearest" });
    }

    // Bin page: zoom (click / z) with panning by mouse position.
    var zoom = document.getElementById("zoom");
    var img = document.getElementById("bin-image");
    function toggleZoom() { if (zoom) { zoom.classList.toggle("zoomed"); if (!zoom.classList.contains("zoomed") && img) { img.style.transformOrigin = "0 0"; } } }
    if (zoom && img) {
      zoom.addEventListener("click", toggleZoom);
      zoom.addEventListener("mousemove", function (ev) {
        if (!zoom.classList.contains("zoomed")) { return; }
        var r = zoom.getBoundingClientRect();
        img.style.transformOrigin = ((ev.clientX - r.left) / r.width * 100) + "% " + ((ev.clientY - r.top) / r.height * 100) + "%";
      });
    }

    var form = document.getElementById("review-form");
    var count = document.getElementById("count");
    function decide(value) {
      if (!form) { return; }
      var button = document.getElementById(value === "confirmed" ? "confirm" : "dismiss");
      if (button) { button.click(); }
    }

    document.addEventListener("keydown", function (ev) {
      if (ev.ctrlKey || ev.metaKey || ev.altKey) { return; }
      if (typing(ev)) {
        if (ev.key === "Escape") { ev.target.blur(); }
        return;
      }
      var k = ev.key;
      if (rows.length) {
        if (k === "j") { select(sel + 1); ev.preventDefault(); return; }
        if (k === "k") { select(sel - 1); ev.preventDefault(); return; }
        if (k === "Enter" && sel >= 0) { window.location.href = rows[sel].dataset.href; return; }
      }
      if (/^[0-9]$/.test(k) && count) { count.value = k; count.focus(); ev.preventDefault(); return; }
      if (k === "c" && form) { decide("confirmed"); ev.preventDefault(); return; }
      if (k === "d" && form) { decide("dismissed"); ev.preventDefault(); return; }
      if (k === "/" && document.getElementById("note")) { document.getElementById("note").focus(); ev.preventDefault(); return; }
      if (k === "z") { toggleZoom(); return; }
      if (k === "n") { go(document.getElementById("next-bin")); return; }
      if (k === "q") { window.location.href = "/queue"; }
    });
  });
})();
