// The step editor's live preview: a moment after the coach stops typing, the form is posted to the
// preview address into the phone, desktop and text frames (each frame's page has its own sandbox policy).
// One form keeps only its last planned submission, so the frames are filled one after the other.
(function () {
  var form = document.getElementById("step-form");
  if (!form) return;
  var ids = ["preview-phone", "preview-desktop", "preview-text"];
  var timer = null;
  function submit(index) {
    if (index >= ids.length) return;
    var button = document.getElementById(ids[index]);
    var frame = document.getElementsByName(button.getAttribute("formtarget"))[0];
    var next = function () {
      frame.removeEventListener("load", next);
      submit(index + 1);
    };
    frame.addEventListener("load", next);
    form.requestSubmit(button);
  }
  form.addEventListener("input", function () {
    clearTimeout(timer);
    timer = setTimeout(function () { submit(0); }, 400);
  });
  document.getElementById("preview-phone").addEventListener("click", function (event) {
    event.preventDefault();
    submit(0);
  });
  // The page came back from a test send or a check with the form as typed, not as saved: show that.
  if (form.dataset.unsaved === "1") submit(0);
})();
