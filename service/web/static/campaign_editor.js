// The step editor's live preview: a moment after the coach stops typing, the form is posted to the
// preview address into the phone, desktop and text frames (each frame's page has its own sandbox policy).
(function () {
  var form = document.getElementById("step-form");
  if (!form) return;
  var timer = null;
  function refresh() {
    ["preview-phone", "preview-desktop", "preview-text"].forEach(function (id) {
      var button = document.getElementById(id);
      if (button) form.requestSubmit(button);
    });
  }
  form.addEventListener("input", function () {
    clearTimeout(timer);
    timer = setTimeout(refresh, 400);
  });
  document.getElementById("preview-phone").addEventListener("click", function (event) {
    event.preventDefault();
    refresh();
  });
})();
