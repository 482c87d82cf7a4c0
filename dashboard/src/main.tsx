import { render } from "preact";
import { App } from "./app";
import { startLivePage } from "./live";
import { startOverview } from "./overview";
import { startStream } from "./stream";
import "./styles.css";

// The table and the overview follow the stream, which waits until the service accepts the key
// and the tab is visible; they subscribe before it starts.
startLivePage();
startOverview();
startStream();

const root = document.getElementById("app");
if (root) {
  render(<App />, root);
}
