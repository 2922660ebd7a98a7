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

  // A form the server refused comes back re-rendered (400/409/422) and htmx swaps it in (see the
  // htmx-config meta): focus its first invalid field so keyboard and screen-reader users land on it.
  document.addEventListener("htmx:afterSwap", function (event) {
    var root = event.detail && event.detail.target;
    if (!root || !root.querySelector) { return; }
    var form = root.tagName === "FORM" ? root : root.querySelector("form");
    var invalid = form && form.querySelector("[aria-invalid='true']");
    if (invalid && typeof invalid.focus === "function") { invalid.focus(); }
  });

  // Any other failure of an htmx request is said in words at the top of the page, never dropped
  // silently. One message at a time: it is replaced by the next failure and removed once the same
  // element's request succeeds again (a poll that recovers).
  var failedElement = null;
  function failureText(xhr) {
    var status = xhr ? xhr.status : 0;
    if (!status) { return "The server could not be reached. Check your connection and try again."; }
    if (status === 401 || status === 403) {
      return "This was refused (" + status + "): your session may have ended or your role does not allow it. Reload the page and try again.";
    }
    if (status === 404) { return "This no longer exists (404). Reload the page to see what changed."; }
    if (status === 429) { return "Too many attempts in a short time (429). Wait a moment, then try again."; }
    if (status >= 500) { return "Something went wrong on our side (" + status + "). Try again in a moment."; }
    return "The server refused this (" + status + "). Reload the page and try again.";
  }
  function showFailure(element, xhr) {
    var main = document.getElementById("main") || document.body;
    var box = document.getElementById("request-error");
    if (!box) {
      box = document.createElement("div");
      box.id = "request-error";
      box.className = "messages";
      box.setAttribute("role", "alert");
      main.insertBefore(box, main.firstChild);
    }
    box.innerHTML = "";
    var text = document.createElement("p");
    text.className = "message error";
    text.textContent = failureText(xhr);
    box.appendChild(text);
    failedElement = element;
  }
  document.addEventListener("htmx:responseError", function (event) {
    showFailure(event.detail.elt, event.detail.xhr);
  });
  document.addEventListener("htmx:sendError", function (event) {
    showFailure(event.detail.elt, null);
  });
  document.addEventListener("htmx:afterRequest", function (event) {
    if (event.detail.successful && event.detail.elt === failedElement) {
      var box = document.getElementById("request-error");
      if (box) { box.remove(); }
      failedElement = null;
    }
  });

  // An invitation link carries its token after "#", so it never reaches a server log: copy it into
  // the token field (kept for this tab, so signing in first does not lose it) and drop it from the URL.
  document.addEventListener("DOMContentLoaded", function () {
    var input = document.querySelector("input[data-token-from-link]");
    if (!input) { return; }
    var key = "otb-invitation-token";
    var fromLink = window.location.hash.replace(/^#/, "");
    try {
      if (fromLink) { window.sessionStorage.setItem(key, fromLink); }
      if (!input.value) { input.value = fromLink || window.sessionStorage.getItem(key) || ""; }
    } catch (error) {
      if (!input.value) { input.value = fromLink; }
    }
    if (fromLink && window.history.replaceState) {
      window.history.replaceState(null, "", window.location.pathname + window.location.search);
    }
    if (input.form) {
      input.form.addEventListener("submit", function () {
        try { window.sessionStorage.removeItem(key); } catch (error) { /* storage unavailable */ }
      });
    }
  });

  // Every date and time in one format, in the viewer's time zone: "6 Dec 2026, 16:42:05". The
  // server writes <time datetime="ISO">6 Dec 2026, 15:42:05 UTC</time> (the same format in UTC,
  // for a page read without script); here each one is rewritten in the browser's zone, which the
  // title names.
  var zone = (Intl.DateTimeFormat().resolvedOptions().timeZone) || "";
  var ONE_FORMAT = new Intl.DateTimeFormat("en-GB", {
    day: "numeric", month: "short", year: "numeric",
    hour: "2-digit", minute: "2-digit", second: "2-digit", hourCycle: "h23",
  });
  var LONG_FORMAT = new Intl.DateTimeFormat("en-GB", { dateStyle: "full", timeStyle: "long" });
  function formatWhen(date) {
    return ONE_FORMAT.format(date);
  }
  function refreshTimes(root) {
    (root || document).querySelectorAll("time[datetime]").forEach(function (el) {
      var then = new Date(el.getAttribute("datetime"));
      if (isNaN(then.getTime())) { return; }
      el.textContent = formatWhen(then);
      el.title = LONG_FORMAT.format(then) + (zone ? " (" + zone + ")" : "");
    });
  }
  document.addEventListener("DOMContentLoaded", function () { refreshTimes(document); });
  document.addEventListener("htmx:afterSwap", function (event) { refreshTimes(event.target); });

  window.otb = window.otb || {};
  window.otb.refreshTimes = refreshTimes;
  window.otb.formatWhen = formatWhen;
})();
