/**
 * vre-session: the VRE's JupyterLab extension.
 *
 * - a "Datasets" sidebar (dataset browser, browser.ts)
 * - a DICOM viewer (viewer.ts) for series (main area) and single files ("Open With" -> DICOM
 *   Viewer; a document widget whose model never loads the file's contents: the viewer reads
 *   the file through vre/api/file?path=..., the contents API refuses dataset/DICOM content)
 * - "Insert code cell" that loads a series as a 3-D array (code.ts)
 * - download actions hidden for dataset paths (guard.ts)
 * - a "Jobs" sidebar for the project's batch queue (jobs.ts), and "Run as batch job" on
 *   notebooks and scripts in the file browser
 * - an "Export requests" sidebar for the airlock (airlock-panel.ts), and "Request export" on files
 *   and folders in the file browser (airlock-picker.ts)
 *
 * The REST API is extensions/API.md; everything is bundled (sessions have no network).
 */
import {
  ILabShell,
  ILayoutRestorer,
  JupyterFrontEnd,
  JupyterFrontEndPlugin
} from '@jupyterlab/application';
import {
  Clipboard,
  ICommandPalette,
  MainAreaWidget,
  Notification,
  WidgetTracker
} from '@jupyterlab/apputils';
import {
  ABCWidgetFactory,
  DocumentModel,
  DocumentRegistry,
  DocumentWidget,
  TextModelFactory
} from '@jupyterlab/docregistry';
import { IDefaultFileBrowser, IFileBrowserFactory } from '@jupyterlab/filebrowser';
import { INotebookTracker, NotebookActions, NotebookPanel } from '@jupyterlab/notebook';
import { Contents } from '@jupyterlab/services';
import { LabIcon } from '@jupyterlab/ui-components';
import { Widget } from '@lumino/widgets';

import { airlockApi, problemLines } from './airlock-api';
import { AirlockPanel } from './airlock-panel';
import { NEW, pickRequest } from './airlock-picker';
import { IDataset, IRoot, ISeriesItem } from './api';
import { DatasetBrowser } from './browser';
import { seriesCode, seriesFolder } from './code';
import { installDownloadGuard, loadAccessPolicy } from './guard';
import { apiUrl, errorText, getJSON } from './http';
import { JobsPanel } from './jobs';
import { DicomViewer } from './viewer';

export { DicomViewer } from './viewer';

const FACTORY = 'DICOM Viewer';
const MODEL = 'vre-dicom';

namespace CommandIDs {
  export const openSeries = 'vre:open-series';
  export const openFile = 'vre:open-file';
  export const openSelected = 'vre:open-selected-in-viewer';
  export const showDatasets = 'vre:show-datasets';
  export const insertCode = 'vre:insert-series-code';
  export const showJobs = 'vre:show-jobs';
  export const runAsJob = 'vre:run-as-job';
  export const showAirlock = 'vre:show-airlock';
  export const requestExport = 'vre:request-export';
}

const dicomSvg = `<svg xmlns="http://www.w3.org/2000/svg" width="16" height="16" viewBox="0 0 24 24">
<g class="jp-icon3" fill="#616161"><path d="M4 3h12l4 4v14H4zm2 2v14h12V8h-3V5z"/>
<ellipse cx="12" cy="13" rx="4.5" ry="3.6" fill="none" stroke="#616161" stroke-width="1.4"/>
<circle cx="10.3" cy="12.6" r="1.1"/><circle cx="13.7" cy="12.6" r="1.1"/></g></svg>`;
const datasetsSvg = `<svg xmlns="http://www.w3.org/2000/svg" width="16" height="16" viewBox="0 0 24 24">
<g class="jp-icon3" fill="#616161"><ellipse cx="12" cy="5" rx="8" ry="3"/>
<path d="M4 7v4c0 1.7 3.6 3 8 3s8-1.3 8-3V7c0 1.7-3.6 3-8 3S4 8.7 4 7z"/>
<path d="M4 13v4c0 1.7 3.6 3 8 3s8-1.3 8-3v-4c0 1.7-3.6 3-8 3s-8-1.3-8-3z"/></g></svg>`;

const jobsSvg = `<svg xmlns="http://www.w3.org/2000/svg" width="16" height="16" viewBox="0 0 24 24">
<g class="jp-icon3" fill="#616161"><path d="M3 4h18v4H3zm0 6h18v4H3zm0 6h18v4H3z" fill-opacity=".25"/>
<path d="M3 4h12v4H3zm0 6h7v4H3zm0 6h17v4H3z"/></g></svg>`;

const airlockSvg = `<svg xmlns="http://www.w3.org/2000/svg" width="16" height="16" viewBox="0 0 24 24">
<g class="jp-icon3" fill="#616161"><path d="M4 3h10l4 4v6h-2V8h-3V5H6v14h6v2H4z"/>
<path d="M17 14h2v4.2l1.6-1.6 1.4 1.4-4 4-4-4 1.4-1.4 1.6 1.6z"/></g></svg>`;

export const dicomIcon = new LabIcon({ name: 'vre-session:dicom', svgstr: dicomSvg });
export const datasetsIcon = new LabIcon({ name: 'vre-session:datasets', svgstr: datasetsSvg });
export const jobsIcon = new LabIcon({ name: 'vre-session:jobs', svgstr: jobsSvg });
export const airlockIcon = new LabIcon({ name: 'vre-session:airlock', svgstr: airlockSvg });

/**
 * A model factory that never asks for the file's content (`content=0`: metadata only) and
 * whose models never save (marked collaborative, so the context neither saves nor creates
 * a checkpoint copy of the DICOM file next to it).
 */
class NoContentModelFactory extends TextModelFactory {
  createNew(options: DocumentRegistry.IModelOptions<any> = {}): DocumentModel {
    return new DocumentModel({ ...options, collaborationEnabled: true });
  }
  get name(): string {
    return MODEL;
  }
  get contentType(): Contents.ContentType {
    return 'file';
  }
  get fileFormat(): Contents.FileFormat {
    return null;
  }
}

class DicomWidgetFactory extends ABCWidgetFactory<DocumentWidget<DicomViewer>, DocumentRegistry.IModel> {
  protected createNewWidget(context: DocumentRegistry.IContext<DocumentRegistry.IModel>): DocumentWidget<DicomViewer> {
    const content = new DicomViewer({ source: { kind: 'file', path: context.path } });
    const widget = new DocumentWidget({ content, context });
    widget.addClass('vre-ViewerDocument');
    widget.title.icon = dicomIcon;
    return widget;
  }
}

const plugin: JupyterFrontEndPlugin<void> = {
  id: 'vre-session:plugin',
  description: 'VRE dataset browser, DICOM viewer and dataset download guard',
  autoStart: true,
  optional: [ILabShell, ILayoutRestorer, ICommandPalette, INotebookTracker, IDefaultFileBrowser, IFileBrowserFactory],
  activate: (
    app: JupyterFrontEnd,
    labShell: ILabShell | null,
    restorer: ILayoutRestorer | null,
    palette: ICommandPalette | null,
    notebooks: INotebookTracker | null,
    defaultBrowser: IDefaultFileBrowser | null,
    browserFactory: IFileBrowserFactory | null
  ) => {
    const { commands, shell, docRegistry } = app;
    let root: IRoot | null = null;
    const rootReady = getJSON<IRoot>(apiUrl([]))
      .then(r => (root = r))
      .catch(e => {
        console.warn('VRE: the session API is not available:', errorText(e));
        return null;
      });
    const link = () => (root ? root.datasets_link : 'data');

    // --- the DICOM file type and "Open With -> DICOM Viewer" ------------------------------
    docRegistry.addFileType({
      name: 'dicom',
      displayName: 'DICOM',
      extensions: ['.dcm', '.dicom'],
      mimeTypes: ['application/dicom'],
      contentType: 'file',
      fileFormat: null,
      icon: dicomIcon
    });
    docRegistry.addModelFactory(new NoContentModelFactory());
    const fileFactory = new DicomWidgetFactory({
      name: FACTORY,
      label: 'DICOM Viewer',
      modelName: MODEL,
      fileTypes: ['dicom'],
      defaultFor: ['dicom'],
      defaultRendered: ['dicom'],
      readOnly: true,
      canStartKernel: false,
      preferKernel: false
    });
    docRegistry.addWidgetFactory(fileFactory);
    const fileTracker = new WidgetTracker<DocumentWidget<DicomViewer>>({ namespace: 'vre-dicom-file' });
    fileFactory.widgetCreated.connect((_, w) => {
      w.toolbar.hide(); // the viewer has its own toolbar
      w.context.pathChanged.connect(() => void fileTracker.save(w));
      void fileTracker.add(w);
    });
    if (restorer) {
      void restorer.restore(fileTracker, {
        command: 'docmanager:open',
        args: w => ({ path: w.context.path, factory: FACTORY }),
        name: w => w.context.path
      });
    }

    // --- series viewers in the main area ---------------------------------------------------
    const seriesTracker = new WidgetTracker<MainAreaWidget<DicomViewer>>({ namespace: 'vre-dicom-series' });
    const key = (dataset: string, uid: string) => `${dataset}/${uid}`;
    commands.addCommand(CommandIDs.openSeries, {
      label: 'Open Series in DICOM Viewer',
      icon: dicomIcon,
      describedBy: {
        args: {
          type: 'object',
          properties: { dataset: { type: 'string' }, seriesUid: { type: 'string' }, label: { type: 'string' } },
          required: ['dataset', 'seriesUid']
        }
      },
      execute: async args => {
        const dataset = String(args.dataset || '');
        const seriesUid = String(args.seriesUid || '');
        if (!dataset || !seriesUid) {
          return null;
        }
        const open = seriesTracker.find(w => {
          const s = w.content.source;
          return s.kind === 'series' && key(s.dataset, s.seriesUid) === key(dataset, seriesUid);
        });
        if (open) {
          shell.activateById(open.id);
          return open;
        }
        const content = new DicomViewer({ source: { kind: 'series', dataset, seriesUid } });
        const widget = new MainAreaWidget({ content });
        widget.id = `vre-viewer-${Math.random().toString(36).slice(2)}`;
        widget.addClass('vre-ViewerPanel');
        widget.toolbar.hide(); // the viewer has its own toolbar
        widget.title.label = String(args.label || 'DICOM series');
        widget.title.icon = dicomIcon;
        widget.title.closable = true;
        // the viewer sets its own title once the metadata is in
        content.title.changed.connect(() => {
          widget.title.label = content.title.label || widget.title.label;
          widget.title.caption = content.title.caption;
        });
        await seriesTracker.add(widget);
        shell.add(widget, 'main');
        shell.activateById(widget.id);
        return widget;
      }
    });
    if (restorer) {
      void restorer.restore(seriesTracker, {
        command: CommandIDs.openSeries,
        args: w => {
          const s = w.content.source;
          return s.kind === 'series' ? { dataset: s.dataset, seriesUid: s.seriesUid, label: w.title.label } : {};
        },
        name: w => {
          const s = w.content.source;
          return s.kind === 'series' ? key(s.dataset, s.seriesUid) : w.id;
        }
      });
    }

    commands.addCommand(CommandIDs.openFile, {
      label: 'Open in DICOM Viewer',
      icon: dicomIcon,
      execute: args => commands.execute('docmanager:open', { path: String(args.path), factory: FACTORY })
    });

    // Extensions that are never DICOM; DICOM files often have none, or a UID-like one.
    const notDicom = /\.(ipynb|py|r|jl|md|txt|csv|tsv|json|ya?ml|toml|ini|cfg|log|sh|html?|pdf|png|jpe?g|gif|svg|tiff?|nii|nrrd|mha|mhd|gz|zip|tar|xlsx?|parquet|h5|hdf5|npy|npz|pkl)$/i;
    const selectedFiles = (): string[] => {
      const browser = browserFactory?.tracker.currentWidget || defaultBrowser;
      if (!browser) {
        return [];
      }
      return Array.from(browser.selectedItems())
        .filter(i => i.type !== 'directory')
        .map(i => i.path);
    };
    commands.addCommand(CommandIDs.openSelected, {
      label: 'Open in DICOM Viewer',
      caption: 'Show the selected DICOM file(s) in the VRE viewer',
      icon: dicomIcon,
      isVisible: () => {
        const files = selectedFiles();
        return files.length > 0 && files.every(p => !notDicom.test(p));
      },
      execute: async () => {
        for (const path of selectedFiles()) {
          await commands.execute('docmanager:open', { path, factory: FACTORY });
        }
      }
    });
    app.contextMenu.addItem({
      command: CommandIDs.openSelected,
      selector: '.jp-DirListing-item[data-isdir="false"]',
      rank: 2
    });

    // --- code cells ------------------------------------------------------------------------
    const insertCode = async (dataset: IDataset, item: ISeriesItem) => {
      const code = seriesCode(dataset, item);
      let panel: NotebookPanel | null = notebooks?.currentWidget ?? null;
      if (!panel) {
        try {
          panel = (await commands.execute('notebook:create-new', { kernelName: 'python3' })) as NotebookPanel;
          await panel.context.ready;
        } catch (e) {
          Notification.error(`Cannot open a notebook for the code: ${errorText(e)}`);
          return;
        }
      }
      shell.activateById(panel.id);
      const nb = panel.content;
      const active = nb.activeCell;
      const reuse = active && active.model.type === 'code' && active.model.sharedModel.getSource().trim() === '';
      if (!reuse) {
        NotebookActions.insertBelow(nb);
      }
      nb.activeCell!.model.sharedModel.setSource(code);
      nb.mode = 'command';
      nb.activate();
      Notification.success(`Code inserted into ${panel.context.localPath}: run the cell (Shift+Enter) to load the series.`, {
        autoClose: 4000
      });
    };
    commands.addCommand(CommandIDs.insertCode, {
      label: 'Insert Code Cell Loading a Series',
      execute: async args => {
        const dataset = browser.currentDataset;
        if (dataset && args.item) {
          await insertCode(dataset, args.item as unknown as ISeriesItem);
        }
      }
    });

    // --- the dataset browser ----------------------------------------------------------------
    const browser = new DatasetBrowser({
      open: (d, item) =>
        void commands.execute(CommandIDs.openSeries, {
          dataset: d.slug,
          seriesUid: item.series_uid,
          label: [item.description || 'Series', item.patient_id].filter(Boolean).join(' — ')
        }),
      copyPath: (d, item) => {
        const folder = seriesFolder(d, item);
        const text = folder || d.path;
        Clipboard.copyToSystem(text);
        Notification.info(
          folder ? `Copied ${folder}` : `Copied the dataset folder ${d.path} (series UID ${item.series_uid})`,
          { autoClose: 3000 }
        );
      },
      insertCode: (d, item) => void insertCode(d, item),
      reveal: path => void commands.execute('filebrowser:go-to-path', { path: '/' + path.replace(/^\/+/, '') })
    });
    browser.title.icon = datasetsIcon;
    shell.add(browser, 'left', { rank: 150 });
    restorer?.add(browser, 'vre-datasets');
    commands.addCommand(CommandIDs.showDatasets, {
      label: 'Show Datasets',
      execute: () => shell.activateById(browser.id)
    });
    palette?.addItem({ command: CommandIDs.showDatasets, category: 'VRE' });

    // --- the batch queue: Jobs sidebar, "Run as batch job" ---------------------------------
    const jobs = new JobsPanel({ openFile: path => void commands.execute('docmanager:open', { path }) });
    jobs.title.icon = jobsIcon;
    shell.add(jobs, 'left', { rank: 160 });
    restorer?.add(jobs, 'vre-jobs');
    commands.addCommand(CommandIDs.showJobs, {
      label: 'Show Jobs',
      caption: "The project's batch jobs: submit, follow, cancel, re-run",
      icon: jobsIcon,
      execute: () => shell.activateById(jobs.id)
    });
    palette?.addItem({ command: CommandIDs.showJobs, category: 'VRE' });
    const jobFile = (): string | null => {
      const files = selectedFiles();
      return files.length === 1 && /\.(ipynb|py)$/i.test(files[0]) ? files[0] : null;
    };
    commands.addCommand(CommandIDs.runAsJob, {
      label: 'Run as batch job',
      caption: 'Open the Jobs panel with this notebook or script in its submit form',
      icon: jobsIcon,
      isVisible: () => jobFile() !== null,
      execute: args => {
        const path = typeof args.path === 'string' ? args.path : jobFile();
        shell.activateById(jobs.id);
        jobs.showForm(path ?? undefined);
      }
    });
    app.contextMenu.addItem({
      command: CommandIDs.runAsJob,
      selector: '.jp-DirListing-item[data-isdir="false"]',
      rank: 3
    });

    // --- the airlock: Export requests sidebar, "Request export" -----------------------------
    const airlock = new AirlockPanel();
    airlock.title.icon = airlockIcon;
    shell.add(airlock, 'left', { rank: 170 });
    restorer?.add(airlock, 'vre-airlock');
    commands.addCommand(CommandIDs.showAirlock, {
      label: 'Show Export Requests',
      caption: 'Request the export of results through the airlock; follow reviews; download released files',
      icon: airlockIcon,
      execute: () => shell.activateById(airlock.id)
    });
    palette?.addItem({ command: CommandIDs.showAirlock, category: 'VRE' });
    const selectedItems = (): string[] => {
      const browser = browserFactory?.tracker.currentWidget || defaultBrowser;
      return browser ? Array.from(browser.selectedItems()).map(i => i.path) : [];
    };
    commands.addCommand(CommandIDs.requestExport, {
      label: 'Request export',
      caption: 'Add the selected files and folders to an export request (airlock)',
      icon: airlockIcon,
      isVisible: () => selectedItems().length > 0,
      execute: async args => {
        const paths = Array.isArray(args.paths) ? (args.paths as string[]) : selectedItems();
        if (!paths.length) {
          return;
        }
        let open;
        try {
          open = await airlock.editable();
        } catch (e) {
          Notification.error(`Cannot list your export requests: ${errorText(e)}`);
          return;
        }
        const choice = await pickRequest(paths, open);
        if (!choice) {
          return;
        }
        const files = paths.map(path => ({ path, description: choice.description }));
        try {
          const req =
            choice.target === NEW
              ? await airlockApi.create(choice.title, '', files)
              : await airlockApi.addFiles(Number(choice.target), files);
          shell.activateById(airlock.id);
          airlock.showRequest(req, `Added to request #${req.id}: ${paths.join(', ')}.`);
        } catch (e) {
          const lines = [errorText(e), ...problemLines(e)];
          Notification.error(lines.join(' · '), { autoClose: false });
          shell.activateById(airlock.id);
          airlock.setStatus(lines.join('\n'), true);
        }
      }
    });
    app.contextMenu.addItem({
      command: CommandIDs.requestExport,
      selector: '.jp-DirListing-item',
      rank: 4
    });

    // --- download actions hidden for dataset paths ------------------------------------------
    installDownloadGuard(app, browserFactory, labShell, link, (w: Widget | null) => {
      if (w instanceof DocumentWidget) {
        return w.context.path;
      }
      return null;
    });
    void loadAccessPolicy(app.serviceManager.serverSettings);
    void rootReady;
  }
};

export default plugin;
