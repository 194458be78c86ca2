// Progressive enhancement of a backfill's progress page: ask for the progress as JSON
// every second and update the page in place; when every backfill has ended, reload to show
// the result. Without JavaScript, a <noscript> refresh reloads the page instead.
(function () {
  "use strict";
  var sections = document.querySelectorAll("section.backfill");
  if (!sections.length) { return; }
  function running() {
    for (var i = 0; i < sections.length; i++) {
      if (sections[i].getAttribute("data-status") === "running") { return true; }
    }
    return false;
  }
  if (!running()) { return; }
  function update(item) {
    var section = document.querySelector('section.backfill[data-backfill="' + item.id + '"]');
    if (!section) { return; }
    section.setAttribute("data-status", item.status);
    var bar = section.querySelector("progress");
    if (bar && item.total) { bar.max = item.total; bar.value = item.done; }
    var text = section.querySelector(".progress-text");
    if (text && text.textContent !== item.text) { text.textContent = item.text; }
    var eta = section.querySelector(".eta");
    if (eta && item.eta_text) {
      var time = eta.querySelector("time");
      time.textContent = item.eta_text;
      time.dateTime = item.estimated_end;
      eta.hidden = false;
    }
  }
  function poll() {
    fetch(window.location.href, { headers: { "Accept": "application/json" }, credentials: "same-origin" })
      .then(function (answer) { if (!answer.ok) { throw new Error(answer.status); } return answer.json(); })
      .then(function (body) {
        body.backfills.forEach(update);
        if (body.finished) { window.location.reload(); } else { window.setTimeout(poll, 1000); }
      })
      .catch(function () { window.setTimeout(poll, 3000); });
  }
  window.setTimeout(poll, 1000);
}());
