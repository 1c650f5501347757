/**
 * Download actions are hidden where the VRE refuses them: for dataset paths (the `data/` link in
 * the Lab root and below) always, and everywhere when the project's downloads mode is `none`.
 *
 * The hub's access layer refuses those downloads anyway (403 download_refused); this only keeps
 * the UI from offering them. The mode comes from the layer itself (`<session>/.vre/policy`) and is
 * set as `body[data-vre-downloads]`. When a context menu opens over a file browser whose selection (or, with
 * no selection, its folder) lies under the link, `body[data-vre-dataset-selection]` is set and
 * style/base.css hides the menu items of the download commands. The same for File > Download
 * while a viewer of a dataset file is the current widget.
 */
import { ILabShell, JupyterFrontEnd } from '@jupyterlab/application';
import { URLExt } from '@jupyterlab/coreutils';
import { ServerConnection } from '@jupyterlab/services';
import { IFileBrowserFactory } from '@jupyterlab/filebrowser';
import { Widget } from '@lumino/widgets';

export const DOWNLOAD_COMMANDS = [
  'filebrowser:download',
  'filebrowser:copy-download-link',
  'filebrowser:open-browser-tab',
  'docmanager:download'
];

export function isDatasetPath(path: string, link: string | null): boolean {
  if (!link) {
    return false;
  }
  // strip a drive prefix ("RTC:") and leading slashes
  const p = path.replace(/^[A-Za-z0-9_-]+:/, '').replace(/^\/+/, '');
  return p === link || p.startsWith(link + '/');
}

export function installDownloadGuard(
  app: JupyterFrontEnd,
  factory: IFileBrowserFactory | null,
  labShell: ILabShell | null,
  getLink: () => string | null,
  pathOfWidget: (w: Widget | null) => string | null
): void {
  const body = document.body;
  const update = (target: EventTarget | null) => {
    let dataset = false;
    const node = target instanceof Node ? target : null;
    factory?.tracker.forEach(browser => {
      if (node && browser.node.contains(node)) {
        const paths = Array.from(browser.selectedItems()).map(i => i.path);
        const candidates = paths.length ? paths : [browser.model.path];
        dataset = candidates.some(p => isDatasetPath(p, getLink()));
      }
    });
    body.dataset.vreDatasetSelection = String(dataset);
  };
  // Capture phase: runs before the Lab opens its context menu for this event.
  document.addEventListener('contextmenu', e => update(e.target), true);
  // Keyboard-opened menus (shift+F10, the menu key) and selections made before them.
  document.addEventListener('keydown', e => {
    if (e.key === 'ContextMenu' || (e.key === 'F10' && e.shiftKey)) {
      update(e.target);
    }
  }, true);

  const current = () => {
    const path = pathOfWidget(labShell?.currentWidget ?? app.shell.currentWidget ?? null);
    body.dataset.vreDatasetDocument = String(!!path && isDatasetPath(path, getLink()));
  };
  labShell?.currentChanged.connect(current);
  current();
}

/** What the access layer enforces for this session (answered by the layer, not the session). */
export interface IAccessPolicy {
  downloads: 'none' | 'results' | 'all';
  audit_cells: boolean;
  egress: { today: number; cap: number; capped: boolean };
}

export async function loadAccessPolicy(
  settings: ServerConnection.ISettings
): Promise<IAccessPolicy | null> {
  try {
    const url = URLExt.join(settings.baseUrl, '.vre/policy');
    const response = await ServerConnection.makeRequest(url, {}, settings);
    if (!response.ok) {
      return null;
    }
    const policy = (await response.json()) as IAccessPolicy;
    document.body.dataset.vreDownloads = policy.downloads;
    return policy;
  } catch {
    return null;
  }
}
