// Renders every <pre class="mermaid"> with the local mermaid bundle; re-renders when
// Furo's theme switch changes between light and dark.
(function () {
  "use strict";
  var blocks = [];
  function dark() {
    var theme = document.body.dataset.theme;
    if (theme === "dark") return true;
    if (theme === "light") return false;
    return window.matchMedia("(prefers-color-scheme: dark)").matches;
  }
  function render() {
    window.mermaid.initialize({
      startOnLoad: false,
      securityLevel: "strict",
      theme: dark() ? "dark" : "default",
    });
    blocks.forEach(function (block) {
      block.el.removeAttribute("data-processed");
      block.el.textContent = block.source;
    });
    return window.mermaid
      .run({ nodes: blocks.map(function (block) { return block.el; }) })
      .catch(function (error) {
        console.error("mermaid failed:", error);
        blocks.forEach(function (block) {
          if (!block.el.querySelector("svg")) block.el.dataset.mermaidError = String(error);
        });
      });
  }
  document.addEventListener("DOMContentLoaded", function () {
    document.querySelectorAll("pre.mermaid").forEach(function (el) {
      blocks.push({ el: el, source: el.textContent });
    });
    if (blocks.length === 0) return;
    render();
    new MutationObserver(render).observe(document.body, {
      attributes: true,
      attributeFilter: ["data-theme"],
    });
  });
})();
