// DistConv dashboard: refresh the page's live part in place every few seconds.
// The server renders it (GET the same URL with X-Live-Fragment: 1); nothing here
// builds HTML. Paused while the tab is hidden, and while the keyboard focus is in
// the live part (so a refresh never takes the focus or a half-typed value away).
(function () {
  "use strict";
  var region = document.querySelector("[data-live]");
  if (!region) { return; }
  var every = Number(region.getAttribute("data-refresh-ms")) || 3000;
  var busy = false;

  function refresh() {
    if (busy || document.hidden || region.contains(document.activeElement)) { return; }
    busy = true;
    fetch(window.location.href, {
      headers: { "X-Live-Fragment": "1" }, credentials: "same-origin", cache: "no-store"
    }).then(function (response) {
      if (response.redirected || response.status === 401) {
        window.location.reload();  // the session ended: the server shows the sign-in page
        return null;
      }
      if (!response.ok || response.headers.get("X-Live-Fragment") !== "1") { return null; }
      return response.text();
    }).then(function (html) {
      if (html !== null && html !== undefined) {
        region.innerHTML = html;
        region.setAttribute("data-refreshed", String(Date.now()));
      }
    }).catch(function () {
      // The server is restarting or unreachable: try again at the next tick.
    }).then(function () { busy = false; });
  }

  window.setInterval(refresh, every);
  document.addEventListener("visibilitychange", function () {
    if (!document.hidden) { refresh(); }
  });
}());
