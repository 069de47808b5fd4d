// The Gust dashboard's only script (the Content-Security-Policy allows no
// other): a question before a change that asks for one, and live follow
// of a function's logs. Every page works without it.
"use strict";

document.addEventListener("submit", (event) => {
  const question = event.target.getAttribute("data-confirm");
  if (question && !window.confirm(question)) {
    event.preventDefault();
  }
});

(() => {
  const table = document.getElementById("logs");
  const box = document.getElementById("follow");
  if (!table || !box) {
    return;
  }
  let timer = null;
  const poll = async () => {
    const base = table.dataset.rowsUrl;
    const url = base + (base.includes("?") ? "&" : "?") + "after=" + encodeURIComponent(table.dataset.next);
    try {
      const answer = await fetch(url, { credentials: "same-origin", redirect: "manual" });
      if (answer.type === "opaqueredirect" || answer.status === 401) {
        // The session ended: the page says so on reload.
        window.location.reload();
        return;
      }
      if (answer.ok) {
        const next = answer.headers.get("gust-next");
        const rows = await answer.text();
        if (rows.trim() !== "") {
          const body = document.getElementById("log-rows");
          body.insertAdjacentHTML("beforeend", rows);
          while (body.rows.length > 1000) {
            body.deleteRow(0);
          }
          const none = document.getElementById("no-logs");
          if (none) {
            none.remove();
          }
        }
        if (next) {
          table.dataset.next = next;
        }
      }
    } catch (_) {
      // The next poll tries again.
    }
    if (box.checked) {
      timer = setTimeout(poll, 1000);
    }
  };
  box.addEventListener("change", () => {
    clearTimeout(timer);
    if (box.checked) {
      poll();
    }
  });
})();
