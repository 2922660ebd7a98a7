/* Behaviour shared by every page. No inline scripts anywhere (the CSP forbids them). */
(function () {
  "use strict";
  document.documentElement.classList.add("js");

  document.addEventListener("change", function (event) {
    var target = event.target;
    if (target.matches && target.matches("select[data-autosubmit]") && target.form) {
      target.form.requestSubmit ? target.form.requestSubmit() : target.form.submit();
    }
  });

  // A form with data-confirm asks before submitting (the server asks again for destructive actions).
  document.addEventListener("submit", function (event) {
    var form = event.target;
    var question = form.getAttribute && form.getAttribute("data-confirm");
    if (question && !window.confirm(question)) {
      event.preventDefault();
      event.stopImmediatePropagation();
    }
  }, true);

  // Local, readable times: <time datetime="..." data-relative> shows "3 min ago" and keeps ticking.
  function relative(iso) {
    var then = Date.parse(iso);
    if (isNaN(then)) { return null; }
    var seconds = Math.round((Date.now() - then) / 1000);
    if (seconds < 5) { return "just now"; }
    if (seconds < 60) { return seconds + " s ago"; }
    if (seconds < 3600) { return Math.round(seconds / 60) + " min ago"; }
    if (seconds < 86400) { return Math.round(seconds / 3600) + " h ago"; }
    return Math.round(seconds / 86400) + " d ago";
  }
  function refreshTimes(root) {
    (root || document).querySelectorAll("time[data-relative]").forEach(function (el) {
      var text = relative(el.getAttribute("datetime"));
      if (text) {
        if (!el.title) { el.title = el.textContent.trim(); }
        el.textContent = text;
      }
    });
  }
  document.addEventListener("DOMContentLoaded", function () { refreshTimes(document); });
  document.addEventListener("htmx:afterSwap", function (event) { refreshTimes(event.target); });
  setInterval(function () { refreshTimes(document); }, 15000);

  window.otb = window.otb || {};
  window.otb.refreshTimes = refreshTimes;
})();
